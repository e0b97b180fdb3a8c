"""Weights fingerprint: cheap float64 moments to check that a generator holds the learner's weights.

The fingerprint is deliberately invariant to tensor order, names and concatenation: a generator
(vLLM) may fuse q/k/v or gate/up projections into one tensor and rename parameters, and the sums
over all elements are the same however the elements are grouped. It cannot catch a permutation of
elements (a transposed matrix), only missing, extra or changed values: it is a smoke check on top of
the versioned protocol, not a proof.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

# {"sum", "sumsq", "abs_sum": float64 totals over all elements, "numel": int}
Fingerprint = dict[str, float]

RTOL = 1e-6  # float64 sums of float32 weights: copies of one tensor agree far closer than this


def weights_fingerprint(named_tensors: Iterable[tuple[str, Tensor]]) -> Fingerprint:
    """{"sum", "sumsq", "abs_sum": float64 totals over all elements, "numel": int}."""
    total: Fingerprint = {"sum": 0.0, "sumsq": 0.0, "abs_sum": 0.0, "numel": 0}
    for _name, t in named_tensors:
        x = t.detach().to(torch.float64)
        total["sum"] += float(x.sum())
        total["sumsq"] += float((x * x).sum())
        total["abs_sum"] += float(x.abs().sum())
        total["numel"] += x.numel()
    return total


def fingerprint_rel_diff(a: Fingerprint, b: Fingerprint) -> float:
    """Largest relative difference of the moments (inf when numel differs). `sum` can be near 0 (signs
    cancel), so its difference is taken relative to abs_sum (the scale of its terms); sumsq and abs_sum
    relative to themselves."""
    if a["numel"] != b["numel"]:
        return math.inf
    diffs = [abs(a["sum"] - b["sum"]) / max(a["abs_sum"], b["abs_sum"], 1e-300)]
    diffs += [abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]), 1e-300) for k in ("sumsq", "abs_sum")]
    return float(max(diffs))


def fingerprints_match(a: Fingerprint, b: Fingerprint, rtol: float = RTOL) -> bool:
    """Same numel, and every moment equal to rtol (see fingerprint_rel_diff)."""
    return fingerprint_rel_diff(a, b) <= rtol
