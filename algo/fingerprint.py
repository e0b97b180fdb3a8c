"""Weights fingerprint: cheap float64 moments to check that a generator holds the learner's weights.

The fingerprint is deliberately invariant to tensor order, names and concatenation: a generator
(vLLM) may fuse q/k/v or gate/up projections into one tensor and rename parameters, and the sums
over all elements are the same however the elements are grouped. It cannot catch a permutation of
elements (a transposed matrix), only missing, extra or changed values: it is a smoke check on top of
the versioned protocol, not a proof.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor


def weights_fingerprint(named_tensors: Iterable[tuple[str, Tensor]]) -> dict:
    """{"sum", "sumsq", "abs_sum": float64 totals over all elements, "numel": int}."""
    total = {"sum": 0.0, "sumsq": 0.0, "abs_sum": 0.0, "numel": 0}
    for _name, t in named_tensors:
        x = t.detach().to(torch.float64)
        total["sum"] += float(x.sum())
        total["sumsq"] += float((x * x).sum())
        total["abs_sum"] += float(x.abs().sum())
        total["numel"] += x.numel()
    return total


def fingerprints_match(a: dict, b: dict, rtol: float = 1e-6) -> bool:
    """Same numel, and sums equal to rtol. `sum` can be near 0 (signs cancel), so its tolerance is
    rtol * abs_sum (the scale of its terms); sumsq and abs_sum are compared relatively."""
    if a["numel"] != b["numel"]:
        return False
    scale = max(a["abs_sum"], b["abs_sum"])
    if abs(a["sum"] - b["sum"]) > rtol * scale:
        return False
    return all(math.isclose(a[k], b[k], rel_tol=rtol, abs_tol=0.0) for k in ("sumsq", "abs_sum"))
