"""Weights fingerprint: invariant to order and fusion, sensitive to changed values."""

import torch

from algo.fingerprint import fingerprints_match, weights_fingerprint


def test_hand_numbers():
    fp = weights_fingerprint([("a", torch.tensor([1.0, -2.0])), ("b", torch.tensor([[3.0]]))])
    # sum 1-2+3 = 2; sumsq 1+4+9 = 14; abs 1+2+3 = 6; 3 elements
    assert fp == {"sum": 2.0, "sumsq": 14.0, "abs_sum": 6.0, "numel": 3}


def test_order_and_fused_qkv_invariance():
    g = torch.Generator().manual_seed(0)
    q, k, v, o = (torch.randn(8, 4, generator=g) for _ in range(4))
    learner = [("q", q), ("k", k), ("v", v), ("o", o)]
    generator = [("o_proj", o), ("qkv_proj", torch.cat([q, k, v]))]
    assert fingerprints_match(weights_fingerprint(learner), weights_fingerprint(generator))


def test_detects_changes():
    w = torch.randn(100, generator=torch.Generator().manual_seed(1))
    base = weights_fingerprint([("w", w)])
    changed = w.clone()
    changed[3] += 1e-3
    assert not fingerprints_match(base, weights_fingerprint([("w", changed)]))
    assert not fingerprints_match(base, weights_fingerprint([("w", w[:-1])]))
    # bf16 copies differ by ~1e-3 relative: a loose rtol accepts them, the default does not
    bf = weights_fingerprint([("w", w.bfloat16())])
    assert not fingerprints_match(base, bf)
    assert fingerprints_match(base, bf, rtol=2e-2)


def test_rel_diff_hand_numbers():
    from algo.fingerprint import fingerprint_rel_diff

    a = {"sum": 2.0, "sumsq": 14.0, "abs_sum": 6.0, "numel": 3}
    b = {"sum": 2.06, "sumsq": 14.0, "abs_sum": 6.0, "numel": 3}
    # |2.06 - 2| / max(abs_sum) = 0.06 / 6 = 0.01; sumsq and abs_sum agree
    assert abs(fingerprint_rel_diff(a, b) - 0.01) < 1e-12
    c = {**a, "sumsq": 14.7}
    # |14.7 - 14| / 14.7 = 0.0476...
    assert abs(fingerprint_rel_diff(a, c) - 0.7 / 14.7) < 1e-12
    assert fingerprint_rel_diff(a, {**a, "numel": 4}) == float("inf")
    assert fingerprint_rel_diff(a, a) == 0.0
