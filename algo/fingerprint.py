"""Weight checks: exact per-tensor hashes (learner vs generators) and cheap moments (learner ranks).

tensor_hashes is what a weight sync is verified with: a blake2b digest of each tensor's bytes, dtype and
shape, compared by name. It sees any changed bit (one missed Adam step at lr 1e-6 changes low mantissa
bits only), a swapped pair of same-shape tensors, a dtype cast and a missing tensor. Both sides must hash
the same representation: the sender hashes exactly what it sends, a generator hashes its engine's
weights read back under HF names and cast to the dtype that was sent.

The fingerprint (float64 moments) stays for the learner ranks agreeing with each other (a ZeRO-3 rank
holds only a shard, so it sums its tensors one gathered parameter at a time). It is invariant to tensor
order, names and concatenation, and blind to permutations: a smoke check, not a proof.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

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


def tensor_hash(t: Tensor) -> str:
    """blake2b (128 bit, hex) of a tensor's dtype, shape and contiguous CPU bytes."""
    x = t.detach().to("cpu").contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{x.dtype}{tuple(x.shape)}".encode())
    # A uint8 view reads any dtype's bytes (bfloat16 has no numpy type); reshape(-1) allows 0-dim tensors.
    h.update(x.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def tensor_hashes(named: Iterable[tuple[str, Tensor]]) -> dict[str, str]:
    """{name: tensor_hash} of every named tensor; a repeated name is an error (it would hide a tensor)."""
    out: dict[str, str] = {}
    for name, t in named:
        if name in out:
            raise ValueError(f"tensor_hashes: name {name!r} appears twice")
        out[name] = tensor_hash(t)
    return out


def hash_mismatches(expected: Mapping[str, str], got: Mapping[str, str]) -> list[str]:
    """Sorted names whose hash differs, that `got` lacks or that `expected` lacks ([] when equal)."""
    return sorted(n for n in expected.keys() | got.keys() if expected.get(n) != got.get(n))
