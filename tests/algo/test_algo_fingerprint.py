"""Weight checks: per-tensor hashes see every bit by name; the fingerprint is invariant to order and fusion."""

import torch

from algo.fingerprint import fingerprints_match, hash_mismatches, tensor_hashes, weights_fingerprint


def named_weights(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(name, torch.randn(8, 4, generator=g)) for name in ("q", "k", "v")] + [("norm", torch.ones(4))]


def test_one_ulp_in_one_tensor_changes_exactly_that_hash():
    named = named_weights()
    base = tensor_hashes(named)
    w = dict(named)["k"].clone()
    w[2, 1] = torch.nextafter(w[2, 1], torch.tensor(float("inf")))  # the next float32 up: one ulp
    changed = tensor_hashes([(n, w if n == "k" else t) for n, t in named])
    assert hash_mismatches(base, changed) == ["k"]
    assert hash_mismatches(base, tensor_hashes(named_weights())) == []  # same values, same hashes


def test_swapped_same_shape_tensors_are_caught_by_name():
    named = named_weights()
    t = dict(named)
    swapped = [("q", t["v"]), ("k", t["k"]), ("v", t["q"]), ("norm", t["norm"])]
    # the moments cannot see it (same multiset of elements), the hashes can
    assert fingerprints_match(weights_fingerprint(named), weights_fingerprint(swapped))
    assert hash_mismatches(tensor_hashes(named), tensor_hashes(swapped)) == ["q", "v"]


def test_missing_extra_dtype_and_shape_are_mismatches():
    named = named_weights()
    base = tensor_hashes(named)
    assert hash_mismatches(base, tensor_hashes(named[:-1])) == ["norm"]
    assert hash_mismatches(base, {**base, "extra": "0"}) == ["extra"]
    cast = [(n, t.bfloat16().float()) if n == "q" else (n, t) for n, t in named]  # a lossy round trip
    assert hash_mismatches(base, tensor_hashes(cast)) == ["q"]
    reshaped = [(n, t.reshape(4, 8)) if n == "k" else (n, t) for n, t in named]  # same bytes, other shape
    assert hash_mismatches(base, tensor_hashes(reshaped)) == ["k"]
    assert tensor_hashes([("b", torch.ones(3, dtype=torch.bfloat16))])  # bfloat16 has no numpy dtype


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
