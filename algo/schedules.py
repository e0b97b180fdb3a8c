"""Learning-rate schedules: the factor of the peak lr at an optimizer step (pure math, no torch).

Every trained model (policy learner, critic, SFT) uses `lr_factor`; `SCHEDULES` is the registry the config's
`learner.schedule` choices come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _constant(progress: float) -> float:
    return 1.0


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float) -> float:
    return 1.0 - progress


# name -> factor of the peak lr as a function of the progress in [0, 1] after warm-up
SCHEDULES: dict[str, Callable[[float], float]] = {"constant": _constant, "cosine": _cosine, "linear": _linear}


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0 = the first update).

    Warm-up is linear and never uses lr 0: step s < warmup_steps gets (s + 1) / warmup_steps.
    After warm-up the schedule maps progress in [0, 1] over the remaining steps (clamped at 1).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return SCHEDULES[schedule](min(1.0, (step - warmup_steps) / span))
