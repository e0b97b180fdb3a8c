"""Losses and aggregation against hand-computed numbers."""

import math

import pytest
import torch

from algo import registry
from algo.losses import agg_units, aggregate, entropy_from_logits, policy_loss, token_logprobs, value_loss

NAN = float("nan")
# row 0: tokens 1, 2 (step 0) and 3 (step 1), then a masked NaN; row 1: token 4 (step 0)
X = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, NAN, NAN, NAN]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
SIDX = torch.tensor([[0, 0, 1, -1], [0, -1, -1, -1]])


def test_aggregate_modes():
    # token: (1+2+3+4)/4 = 2.5
    assert aggregate(X, MASK, SIDX, "token").item() == pytest.approx(2.5)
    # sequence: row means 2 and 4 -> 3
    assert aggregate(X, MASK, SIDX, "sequence").item() == pytest.approx(3.0)
    # step: step means 1.5, 3, 4 -> 8.5/3 = 2.833333
    assert aggregate(X, MASK, SIDX, "step").item() == pytest.approx(8.5 / 3)
    assert registry.LOSS_AGGREGATIONS == ("token", "step", "sequence")
    with pytest.raises(ValueError, match="unknown loss aggregation 'batch'; valid: token, step, sequence"):
        aggregate(X, MASK, SIDX, "batch")
    with pytest.raises(ValueError, match="unknown loss aggregation 'token_sum_norm'"):  # removed: padding-dependent
        aggregate(X, MASK, SIDX, "token_sum_norm")


def test_agg_units_by_hand():
    mask = torch.tensor([[0.0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    step = torch.tensor([[-1, 0, 0, 1], [-1, -1, -1, -1], [0, 1, -1, -1]])
    assert float(agg_units(mask, step, "token")) == 5.0  # five real tokens
    assert float(agg_units(mask, step, "sequence")) == 2.0  # the empty row 1 does not count
    assert float(agg_units(mask, step, "step")) == 4.0  # row 0: steps 0, 1; row 2: steps 0, 1
    with pytest.raises(ValueError, match="bogus"):
        agg_units(mask, step, "bogus")


def test_aggregate_empty_rows_and_gradients():
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]], requires_grad=True)
    m = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # row 1 has no real token: it takes no part
    s = torch.tensor([[0, 1], [-1, -1]])
    for mode, expected in (("token", 2.0), ("sequence", 2.0), ("step", 2.0)):
        out = aggregate(x, m, s, mode)
        assert out.item() == pytest.approx(expected)
        (g,) = torch.autograd.grad(out, x)
        assert g[1].abs().sum().item() == 0.0


# three tokens: ratios 1.5, 0.5, 1.1 with advantages 1, -1, 2
LP_OLD = torch.zeros(1, 3)
LP = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
ADV = torch.tensor([[1.0, -1.0, 2.0]])
M3 = torch.ones(1, 3)
S3 = torch.zeros(1, 3, dtype=torch.long)
# plain PPO (the values the hand numbers below were worked with); the losses take no defaults
PPO = dict(clip_low=0.2, clip_high=0.2, dual_clip=None, agg="token")


def test_policy_loss_ppo_clip():
    loss, stats = policy_loss(LP, LP_OLD, ADV, M3, S3, **PPO)
    # t0: max(-1.5, -1.2) = -1.2 (clipped); t1: max(.5, .8) = .8 (clipped); t2: -2.2
    # mean (-1.2 + .8 - 2.2)/3 = -.866667; clip_frac 2/3
    assert loss.item() == pytest.approx(-2.6 / 3, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(2 / 3)
    assert stats["ratio_mean"] == pytest.approx(3.1 / 3, abs=1e-6)
    # k3 with r = new/old: (r - 1) - log r = .094535, .193147, .004690 -> mean .097457
    assert stats["approx_kl"] == pytest.approx(0.097457, abs=1e-5)
    assert stats["ratio_max"] == pytest.approx(1.5)


def test_policy_loss_clip_higher():
    loss, stats = policy_loss(LP, LP_OLD, ADV, M3, S3, **{**PPO, "clip_high": 0.6})
    # t0: ratio 1.5 inside [.8, 1.6]: -1.5 ; (-1.5 + .8 - 2.2)/3 = -.966667 ; one token clipped
    assert loss.item() == pytest.approx(-2.9 / 3, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(1 / 3)


def test_policy_loss_dual_clip_and_gradients():
    lp = torch.log(torch.tensor([[5.0, 1.5]])).requires_grad_()
    adv = torch.tensor([[-1.0, 1.0]])
    m, s = torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long)
    # t0: ratio 5, A = -1: PPO loss max(5, 1.2) = 5; dual clip c = 3 caps it at -c*A = 3
    # t1: ratio 1.5, A = 1: clipped at 1.2 -> -1.2
    loss, stats = policy_loss(lp, torch.zeros(1, 2), adv, m, s, **PPO)
    assert loss.item() == pytest.approx((5.0 - 1.2) / 2, abs=1e-5)
    loss, stats = policy_loss(lp, torch.zeros(1, 2), adv, m, s, **{**PPO, "dual_clip": 3.0})
    assert loss.item() == pytest.approx((3.0 - 1.2) / 2, abs=1e-5)
    assert stats["dual_clip_frac"] == pytest.approx(0.5)
    (g,) = torch.autograd.grad(loss, lp)
    assert g.abs().sum().item() == 0.0  # both tokens clipped: no gradient
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(lp, torch.zeros(1, 2), adv, m, s, **{**PPO, "dual_clip": 0.5})


def test_policy_loss_ignores_masked_tokens():
    lp = torch.tensor([[0.1, NAN, 0.2]])
    old = torch.tensor([[0.0, NAN, 0.0]])
    adv = torch.tensor([[1.0, NAN, -1.0]])
    m = torch.tensor([[1.0, 0.0, 1.0]])
    loss, stats = policy_loss(lp, old, adv, m, torch.zeros(1, 3, dtype=torch.long), **PPO)
    keep = [0, 2]
    ref, _ = policy_loss(
        lp[:, keep], old[:, keep], adv[:, keep], torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long), **PPO
    )
    assert loss.item() == pytest.approx(ref.item())
    assert all(math.isfinite(v) for v in stats.values())


def test_value_loss_clipped():
    values = torch.tensor([[1.0, 2.0]])
    old = torch.tensor([[0.5, 2.0]])
    returns = torch.tensor([[1.2, 3.0]])
    m, s = torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long)
    # t0: (1 - 1.2)^2 = .04; v_clip = .5 + .2 = .7 -> (.7 - 1.2)^2 = .25; .5 * max = .125 (clipped)
    # t1: (2 - 3)^2 = 1, v_clip = 2 -> 1; .5 ; mean (.125 + .5)/2 = .3125
    loss, stats = value_loss(values, old, returns, m, s, clip=0.2, agg="token")
    assert loss.item() == pytest.approx(0.3125)
    assert stats["value_clip_frac"] == pytest.approx(0.5)
    # unclipped: .5 * (.04 + 1) / 2 = .26
    loss, _ = value_loss(values, old, returns, m, s, clip=None, agg="token")
    assert loss.item() == pytest.approx(0.26)


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0], [0.0, float("-inf"), 0.0, 0.0]]])
    h = entropy_from_logits(logits)
    # uniform over 4: log 4 ; one huge logit: ~0 ; uniform over 3 allowed: log 3
    torch.testing.assert_close(h, torch.tensor([[math.log(4), 0.0, math.log(3)]]))
    rnd = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(entropy_from_logits(rnd), torch.distributions.Categorical(logits=rnd).entropy())


def test_token_logprobs():
    rnd = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(2))
    expected = torch.log_softmax(rnd, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(rnd, labels), expected)
    out = token_logprobs(rnd.bfloat16(), labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="vocabulary"):
        token_logprobs(rnd, labels + 7)
