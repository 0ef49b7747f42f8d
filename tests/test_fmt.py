"""workbook.fmt: the one number formatter of the notebooks and the index page, checked on the values the
notebooks print (a capacity factor, a max attention logit, a parameter count, an entropy)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sparse_experts.workbook import fmt


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),  # a capacity factor, not 0.100000
        (0.25, "0.25"),
        (1.0, "1"),
        (0.225974, "0.226"),
        (0.0123456, "0.0123"),  # GFLOPs per image, three significant digits
        (10.761821, "10.8"),
        (2187.764893, "2,188"),
        (644286.0625, "644,286"),  # a max attention logit, not 644286.062500
        (202186.0, "202,186"),  # a parameter count stored as a float
        (21_756_396_520, "21,756,396,520"),
        (np.int64(4096), "4,096"),
        (np.float32(0.5), "0.5"),
        (-0.0625, "-0.0625"),
        (3e-5, "3.00e-05"),
        (2.5e12 + 0.5, "2.50e+12"),
        (0.0, "0"),
        (float("nan"), "nan"),
        (None, "-"),
        (True, "True"),
        ("reproduced", "reproduced"),
    ],
)
def test_number(value, text):
    assert fmt.number(value) == text


def test_units():
    assert fmt.percent(0.8712) == "87.1%" and fmt.percent(0.5, 0) == "50%" and fmt.percent(None) == "-"
    assert fmt.points(0.0102) == "+1.0 points" and fmt.points(-0.004) == "-0.4 points"
    assert fmt.nats(np.log(8)) == "2.08 nats"


def test_style_formats_every_cell_and_the_index_once():
    frame = pd.DataFrame(
        {"accuracy": [0.8712, 0.5], "gflops": [0.0123456, 0.02], "stable": [True, False]},
        index=pd.Index([0.1, 1.0], name="capacity_factor"),
    )
    html = fmt.style(frame, {"accuracy": fmt.percent}).to_html()
    for text in ("87.1%", "50.0%", "0.0123", "0.02", "True", ">0.1<", ">1<"):
        assert text in html
    assert "0.100000" not in html and "0.012346" not in html
    with pytest.raises(ValueError, match="not in the table"):
        fmt.style(frame, {"nope": fmt.percent})
