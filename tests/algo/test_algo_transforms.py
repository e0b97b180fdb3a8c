"""Reward transforms against hand-computed numbers."""

import math

import pytest
import torch

from algo import registry
from algo.transforms import TRANSFORM_FNS, apply_reward_transform, clip, delta, log_prob

# two samples: 3 steps and 2 steps; the padded step holds NaN to prove it never leaks
R = torch.tensor([[0.9, 0.2, 0.6, float("nan")], [0.5, 1.0, float("nan"), float("nan")]])
M = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def check(name, expected, **params):
    out = apply_reward_transform(name, R, M, **params)
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-5, rtol=0)


def test_identity():
    check("identity", [[0.9, 0.2, 0.6, 0.0], [0.5, 1.0, 0.0, 0.0]])


def test_linear():
    # 2p - 1: 0.8, -0.6, 0.2 | 0.0, 1.0
    check("linear", [[0.8, -0.6, 0.2, 0.0], [0.0, 1.0, 0.0, 0.0]])


def test_log_prob():
    # log .9 = -0.105361, log .2 = -1.609438 -> clipped at -1.5, log .6 = -0.510826 ; + log_z = 0.1
    # log .5 + .1 = -0.593147, log 1 + .1 = 0.1
    check("log_prob", [[-0.005361, -1.5, -0.410826, 0.0], [-0.593147, 0.1, 0.0, 0.0]], log_z=0.1, min_value=-1.5)
    zero = apply_reward_transform("log_prob", torch.zeros(1, 1), torch.ones(1, 1), min_value=-7.0)
    assert zero.item() == -7.0  # log 0 is clipped, not -inf


def test_clip_gao():
    # min(r - eta, 0) with eta = 0.7: .9 -> 0, .2 -> -.5, .6 -> -.1 | .5 -> -.2, 1 -> 0
    check("clip", [[0.0, -0.5, -0.1, 0.0], [-0.2, 0.0, 0.0, 0.0]], eta=0.7)


def test_delta_gao_keep_last_telescopes():
    # r_k - r_{k+1}: .9-.2 = .7, .2-.6 = -.4, last keeps .6 | .5-1 = -.5, last 1.0
    check("delta", [[0.7, -0.4, 0.6, 0.0], [-0.5, 1.0, 0.0, 0.0]])
    out = apply_reward_transform("delta", R, M)
    # return-to-go from step k equals r_k: sums of suffixes .9, .2, .6 | .5, 1.0
    rtg = torch.flip(torch.cumsum(torch.flip(out, [1]), 1), [1]) * M
    torch.testing.assert_close(rtg, torch.nan_to_num(R) * M)


def test_delta_gao_drop_last():
    check("delta", [[0.7, -0.4, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]], keep_last=False)


def test_min_form_pure():
    # credit_k = min_{j>=k} r_j: min(.9,.2,.6) = .2, min(.2,.6) = .2, .6 | min(.5,1) = .5, 1.0
    check("min_form", [[0.2, 0.2, 0.6, 0.0], [0.5, 1.0, 0.0, 0.0]])


def test_delta_of_min_form_sums_to_min():
    m = apply_reward_transform("min_form", R, M)
    d = apply_reward_transform("delta", m, M)
    rtg = torch.flip(torch.cumsum(torch.flip(d, [1]), 1), [1]) * M
    torch.testing.assert_close(rtg, m)


def test_every_transform_is_zero_on_missing_steps_and_finite():
    for name in registry.TRANSFORMS:
        out = apply_reward_transform(name, R, M)
        assert torch.isfinite(out).all(), name
        assert (out[M == 0] == 0).all(), name


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown reward transform 'nope'; valid: .*min_form"):
        apply_reward_transform("nope", R, M)
    with pytest.raises(ValueError, match="prefix"):
        apply_reward_transform("delta", R, torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        apply_reward_transform("identity", R, M[:, :2])
    assert math.isclose(apply_reward_transform("linear", torch.ones(1, 1), torch.ones(1, 1)).item(), 1.0)


def test_parameters_default_from_the_registry_and_unknown_ones_are_refused():
    assert set(TRANSFORM_FNS) == set(registry.TRANSFORMS)
    # the registry's defaults are the old keyword defaults: log_z 0, min_value -10, eta .5, keep_last True
    torch.testing.assert_close(apply_reward_transform("log_prob", R, M), log_prob(R, M, log_z=0.0, min_value=-10.0))
    torch.testing.assert_close(apply_reward_transform("clip", R, M), clip(R, M, eta=0.5))
    torch.testing.assert_close(apply_reward_transform("delta", R, M), delta(R, M, keep_last=True))
    # a partial override keeps the other default: log .2 = -1.609438 is not clipped at -10
    out = apply_reward_transform("log_prob", R, M, log_z=0.1)
    assert out[0, 1].item() == pytest.approx(-1.509438, abs=1e-5)
    with pytest.raises(ValueError, match=r"reward transform 'clip' has no parameters \['etta'\]; it takes \['eta'\]"):
        apply_reward_transform("clip", R, M, etta=0.7)
    with pytest.raises(ValueError, match="'identity' has no parameters"):
        apply_reward_transform("identity", R, M, eta=0.5)
    with pytest.raises(TypeError):  # the functions themselves take no defaults: one default per knob
        clip(R, M)
