"""One shape for every paper claim a notebook checks: a verdict, the numbers behind it, and a sentence.

Every notebook states a paper's claim, measures it at its scale and says plainly how it came out. The checks
(notebook 01's QK-norm stability, notebook 02's dense-vs-V-MoE comparison, notebook 04's BPR sweep, ...)
each compute their numbers their own way, but all return a :class:`Claim`, so the index page, the saved
figures and the tests read them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("reproduced", "within noise", "not reproduced", "contradicted", "not tested")
"""- "reproduced": the measured effect points the paper's way by more than the noise;
- "within noise": the measured effect is smaller than the noise (neither shown nor refuted);
- "not reproduced": measured with enough power, and the effect is absent at this scale;
- "contradicted": the opposite of the paper's claim, by more than the noise;
- "not tested": this run cannot test the claim (the sentence says why)."""


@dataclass(frozen=True)
class Claim:
    """A paper's claim checked on this run.

    ``claim``: the paper's claim in one sentence; ``verdict``: one of :data:`VERDICTS`; ``sentence``: what
    was measured, with the numbers, in plain words; ``numbers``: the figures behind the verdict (plain
    floats, ints, strings, or lists/dicts of them: JSON as it is).
    """

    claim: str
    verdict: str
    sentence: str
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Claim.verdict={self.verdict!r} is not allowed; expected one of {VERDICTS}")
        if not self.sentence.strip():
            raise ValueError("Claim.sentence is empty; say what was measured")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the figures JSON: ``{"claim", "verdict", "sentence", "numbers"}``."""
        return {"claim": self.claim, "verdict": self.verdict, "sentence": self.sentence,
                "numbers": dict(self.numbers)}  # fmt: skip

    def __str__(self) -> str:
        return f"{self.verdict.upper()}: {self.sentence}"
