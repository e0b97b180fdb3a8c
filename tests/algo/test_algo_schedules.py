"""Learning-rate schedules: the factor of the peak lr at an optimizer step, worked by hand."""

import pytest

from algo.schedules import SCHEDULES, lr_factor


def test_lr_factor_by_hand():
    # warm-up 4 of 12 steps: (s+1)/4 for s < 4, then cosine over the remaining 8 steps
    kw = dict(warmup_steps=4, total_steps=12, schedule="cosine")
    assert lr_factor(0, **kw) == pytest.approx(0.25)
    assert lr_factor(3, **kw) == pytest.approx(1.0)
    assert lr_factor(4, **kw) == pytest.approx(1.0)  # progress 0
    assert lr_factor(8, **kw) == pytest.approx(0.5)  # progress 4/8: (1 + cos(pi/2)) / 2
    assert lr_factor(12, **kw) == pytest.approx(0.0)  # progress 1
    assert lr_factor(30, **kw) == pytest.approx(0.0)  # clamped
    assert lr_factor(10, warmup_steps=0, total_steps=12, schedule="constant") == 1.0
    # linear decay to 0 over the 8 steps after warm-up: 1 - progress
    lin = dict(warmup_steps=4, total_steps=12, schedule="linear")
    assert [lr_factor(s, **lin) for s in (4, 6, 10, 12)] == pytest.approx([1.0, 0.75, 0.25, 0.0])
    assert set(SCHEDULES) == {"constant", "cosine", "linear"}
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, warmup_steps=0, total_steps=1, schedule="linear_decay")
