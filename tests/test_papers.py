"""workbook.papers: each published claim names its paper and place, and sits beside a measured sentence."""

from __future__ import annotations

import pytest

from sparse_experts.workbook import papers


def test_every_claim_names_paper_place_and_text():
    named = {value for name, value in vars(papers).items() if name.isupper() and isinstance(value, str)}
    assert {papers.VIT22B, papers.VMOE, papers.ENSEMBLES} <= named
    for key, claim in papers.PUBLISHED.items():
        assert claim.paper in named, key  # one of the module's paper names, spelled once
        assert claim.where and claim.says.endswith("."), key


def test_paper_and_here():
    text = papers.paper_and_here("parallel_block", " parallel / sequential step time 0.89. ")
    assert text.startswith("**Paper says** (Dehghani et al. 2023 (ViT-22B), its model section (parallel")
    assert "15% faster" in text and text.endswith("**Here we see**: parallel / sequential step time 0.89.")
    with pytest.raises(ValueError, match="key='nope'"):
        papers.paper_and_here("nope", "x")
    with pytest.raises(ValueError, match="here="):
        papers.paper_and_here("bpr", "  ")
