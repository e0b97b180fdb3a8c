"""Off-policy corrections against hand-computed numbers, and the invariance that makes them safe defaults."""

import math

import pytest
import torch

from algo import registry
from algo.losses import policy_loss
from algo.offpolicy import ratio_base, weight_stats, weight_sums

# two real tokens and a padded one: the learner finds token 0 twice as likely as the sampler did (w = 2),
# token 1 half as likely (w = 0.5)
OLD = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
BEHAVIOR = torch.log(torch.tensor([[0.25, 0.5, 0.1]]))
MASK = torch.tensor([[1.0, 1.0, 0.0]])
STEP = torch.tensor([[0, 0, -1]])
PPO = dict(clip_low=0.2, clip_high=0.2, dual_clip=None, agg="token")


def test_each_mode_takes_the_ratio_against_its_log_probs():
    assert registry.OFF_POLICY == ("recompute", "behavior", "decoupled")
    base, w = ratio_base("recompute", OLD, BEHAVIOR)
    assert base is OLD and w is None
    base, w = ratio_base("behavior", OLD, BEHAVIOR)
    assert base is BEHAVIOR and w is None
    base, w = ratio_base("decoupled", OLD, BEHAVIOR)
    assert base is OLD and w is not None
    assert w[0, :2].tolist() == pytest.approx([2.0, 0.5])  # pi_old / mu = 0.5 / 0.25, 0.25 / 0.5
    _, w = ratio_base("decoupled", OLD, BEHAVIOR, cap=1.5)
    assert w[0, :2].tolist() == pytest.approx([1.5, 0.5])  # truncated at the cap, never raised
    with pytest.raises(ValueError, match="unknown off-policy correction 'vtrace'; valid: recompute, behavior"):
        ratio_base("vtrace", OLD, BEHAVIOR)
    with pytest.raises(ValueError, match="cap must be > 0"):
        ratio_base("decoupled", OLD, BEHAVIOR, cap=0.0)


def test_decoupled_weight_multiplies_the_clipped_loss_outside_the_clip():
    # The policy has not moved yet (logprobs = old): ratio 1, nothing clipped. Advantages 1 and 1: each token's
    # PPO loss is -1, weighted -2 and -0.5; token mean (-2 - 0.5) / 2 = -1.25.
    adv = torch.tensor([[1.0, 1.0, 7.0]])
    lp = OLD.clone().requires_grad_()
    base, w = ratio_base("decoupled", OLD, BEHAVIOR)
    loss, stats = policy_loss(lp, base, adv, MASK, STEP, **PPO, weight=w)
    assert loss.item() == pytest.approx(-1.25)
    assert stats["clip_frac"] == 0.0
    (g,) = torch.autograd.grad(loss, lp)
    # d/dlp of -A * w * exp(lp - old) / 2 at lp = old: -w / 2 -> -1, -0.25; the padded token gets nothing
    assert g[0].tolist() == pytest.approx([-1.0, -0.25, 0.0])
    # Against the behaviour log-probs instead, token 0 has ratio 2 (clipped at 1.2) and token 1 ratio 0.5
    # (A > 0: min(0.5, 0.8) = 0.5, unclipped): loss (-1.2 - 0.5) / 2 = -0.85
    loss, stats = policy_loss(OLD, ratio_base("behavior", OLD, BEHAVIOR)[0], adv, MASK, STEP, **PPO)
    assert loss.item() == pytest.approx(-0.85)
    assert stats["clip_frac"] == pytest.approx(0.5)


def test_on_a_fresh_batch_every_mode_is_plain_ppo():
    # mu = pi_old (no lag, no sampler gap): the ratio bases agree and the weight is 1, so loss and gradient match.
    torch.manual_seed(0)
    old = torch.randn(2, 5).log_softmax(-1)
    lp = (old + 0.1 * torch.randn(2, 5)).requires_grad_()
    adv, mask, step = torch.randn(2, 5), torch.ones(2, 5), torch.zeros(2, 5, dtype=torch.long)
    results = []
    for mode in registry.OFF_POLICY:
        base, w = ratio_base(mode, old, old.clone(), cap=2.0 if mode == "decoupled" else None)
        loss, _ = policy_loss(lp, base, adv, mask, step, **PPO, weight=w)
        (g,) = torch.autograd.grad(loss, lp)
        results.append((loss.item(), g))
    for loss, g in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=1e-7)
        assert torch.allclose(g, results[0][1], atol=1e-7)


def test_weight_stats_by_hand():
    # w = 2 and 0.5 on the real tokens (the padded one, w = 9, takes no part):
    # mean |log w| = (ln 2 + ln 2) / 2 = ln 2; w - 1 = 1, -0.5: mean |w - 1| = 0.75, mean 0.25,
    # mean (w - 1)^2 = (1 + 0.25) / 2 = 0.625, std = sqrt(0.625 - 0.25^2) = 0.75; the cap 1.5 truncates 1 of 2.
    stats = weight_stats(weight_sums(OLD, BEHAVIOR, MASK, cap=1.5))
    assert stats["logprob_diff"] == pytest.approx(math.log(2))
    assert stats["tokens"] == 2.0
    assert stats["offpolicy/ratio_abs_dev"] == pytest.approx(0.75)
    assert stats["offpolicy/ratio_std"] == pytest.approx(0.75)
    assert stats["offpolicy/truncated_frac"] == pytest.approx(0.5)
    assert weight_stats(weight_sums(OLD, BEHAVIOR, MASK, cap=None))["offpolicy/truncated_frac"] == 0.0
    # sums add over micro-batches and ranks: the two tokens apart give the same stats
    apart = weight_sums(OLD[:, :1], BEHAVIOR[:, :1], MASK[:, :1], 1.5) + weight_sums(
        OLD[:, 1:], BEHAVIOR[:, 1:], MASK[:, 1:], 1.5
    )
    assert weight_stats(apart) == pytest.approx(stats)
