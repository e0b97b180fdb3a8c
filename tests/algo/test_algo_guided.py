"""Guided samples (LUFFY 2504.14945): which groups get a gold sample, the capped weight, the policy loss of a
flagged row, and the batch column, against hand-worked numbers; unflagged rows bit-identical to before."""

import math

import pytest
import torch

from algo.batch import batch_advantages, collate
from algo.guided import failed_groups, guided_weight, weight_stats, weight_sums
from algo.losses import policy_loss
from algo.trajectory import Trajectory

LN3, LN_HALF = math.log(3.0), math.log(0.5)
PPO = dict(clip_low=0.2, clip_high=0.2, dual_clip=None, agg="token")


def test_failed_groups_by_hand():
    outcomes = {
        4: [0.0, 0.0, 0.0],  # all failed -> gold
        1: [0.0, 1.0],  # one success -> none
        2: [],  # no valid sample (all masked): nothing says it failed -> none
        7: [0.0],  # the other samples masked, the valid one failed -> gold
        3: [0.5, 0.0],  # a partial outcome is not a failure -> none
    }
    assert failed_groups(outcomes) == [4, 7]  # in the mapping's order


def test_capped_weight_and_its_gradient_by_hand():
    # log pi_theta - log mu = ln 3 -> ratio 3, capped at 2: weight 2, and no gradient through the cap;
    # ln 0.5 -> ratio 0.5 below the cap: weight 0.5, d weight / d log pi_theta = ratio = 0.5
    log_ratio = torch.tensor([LN3, LN_HALF], requires_grad=True)
    w = guided_weight(log_ratio, max_weight=2.0)
    assert w.tolist() == pytest.approx([2.0, 0.5])
    (g,) = torch.autograd.grad(w.sum(), log_ratio)
    assert g.tolist() == pytest.approx([0.0, 0.5])
    with pytest.raises(ValueError, match="max_weight"):
        guided_weight(log_ratio, max_weight=0.0)


def test_policy_loss_of_a_flagged_row_by_hand():
    # row 0 is a gold sample: log ratios ln 3 and ln 0.5, A = 2 on both; row 1 a policy sample: ratio 1.5, A = 1
    # (its second token is padding). Token aggregation over the 3 real tokens, max_weight 2:
    #   gold t0: -min(3, 2) * 2 = -4   (unclipped: PPO would have stopped at -1.2 * 2 = -2.4)
    #   gold t1: -min(0.5, 2) * 2 = -1
    #   policy t0: PPO max(-1.5, -1.2) = -1.2 (clipped)
    # loss = (-4 - 1 - 1.2) / 3 = -6.2 / 3
    # d loss / d logprob: gold t0 capped -> 0; gold t1 -A * ratio / 3 = -2 * 0.5 / 3 = -1/3; policy t0 clipped -> 0
    lp = torch.tensor([[LN3, LN_HALF], [math.log(1.5), 0.0]], requires_grad=True)
    old, adv = torch.zeros(2, 2), torch.tensor([[2.0, 2.0], [1.0, 0.0]])
    mask, steps = torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([[0, 0], [0, -1]])
    guided = torch.tensor([1.0, 0.0])
    loss, stats = policy_loss(lp, old, adv, mask, steps, **PPO, guided=guided, max_weight=2.0)
    assert loss.item() == pytest.approx(-6.2 / 3, abs=1e-6)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[0].tolist() == pytest.approx([0.0, -1 / 3], abs=1e-6)
    assert g[1, 0].item() == 0.0
    assert stats["clip_frac"] == pytest.approx(1 / 3)  # the gold tokens are never clipped; PPO clips the policy's
    plain, plain_stats = policy_loss(lp, old, adv, mask, steps, **PPO)  # the same rows unflagged: plain PPO
    # gold t0 clipped at 1.2: -2.4; gold t1 ratio 0.5 < 0.8 with A > 0: max(-1, -1.6) = -1 (not clipped)
    assert plain.item() == pytest.approx((-2.4 - 1.0 - 1.2) / 3, abs=1e-6)
    assert plain_stats["clip_frac"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="max_weight"):
        policy_loss(lp, old, adv, mask, steps, **PPO, guided=guided)


@pytest.mark.parametrize("extra", [{}, {"dual_clip": 3.0}, {"agg": "step"}, {"agg": "sequence"}])
def test_unflagged_rows_are_bit_identical_to_plain_ppo(extra):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 6
    lp0 = -torch.rand(B, T, generator=g) * 3
    old = lp0 + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    steps = torch.arange(T).repeat(B, 1) // 2
    weight = torch.rand(B, T, generator=g) + 0.5  # the decoupled importance weight: still applied as before
    kw = {**PPO, **extra, "weight": weight}
    results = []
    for guided in ({}, {"guided": torch.zeros(B)}, {"guided": torch.zeros(B), "max_weight": 2.0}):
        lp = lp0.clone().requires_grad_()
        loss, stats = policy_loss(lp, old, adv, mask, steps, **kw, **guided)
        (grad,) = torch.autograd.grad(loss, lp)
        results.append((loss.detach(), grad, stats))
    for loss, grad, stats in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1]) and stats == results[0][2]


def test_weight_sums_and_stats_by_hand():
    # row 0 guided with weights 2 and 0.5 (its third token is padding), row 1 not guided (its weights ignored):
    # sum 2.5, sum of squares 4 + 0.25 = 4.25, 2 tokens, max 2 -> mean 1.25, std sqrt(4.25 / 2 - 1.25^2) = 0.75
    w = torch.tensor([[2.0, 0.5, 9.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    sums = weight_sums(w, mask, torch.tensor([1.0, 0.0]))
    assert sums.tolist() == [2.5, 4.25, 2.0, 2.0]
    assert weight_stats(2.5, 4.25, 2.0, 2.0) == pytest.approx(
        {"guided/weight_mean": 1.25, "guided/weight_std": 0.75, "guided/weight_max": 2.0}
    )
    assert weight_sums(w, mask, torch.zeros(2)).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert weight_stats(0.0, 0.0, 0.0, 0.0) == {}  # no guided token this step: nothing to describe


def traj(uid: str, guided: bool, outcome: float) -> Trajectory:
    return Trajectory(
        uid=uid,
        prompt_id="p",
        group_id=0,
        policy_version=0,
        prompt_ids=[5],
        response_ids=[6, 7],
        behavior_logprobs=[0.0, 0.0] if guided else [-1.0, -1.0],  # a gold sample has none (zeros)
        finish_reason="stop",
        step_spans=[(0, 2)],
        step_rewards=[outcome],
        outcome_reward=outcome,
        info={"sample": int(uid), **({"guided": True} if guided else {})},
    )


def test_collate_flags_gold_samples_and_the_behaviour_kl_leaves_them_out():
    batch = collate([traj("0", False, 0.0), traj("1", False, 0.0), traj("2", True, 1.0)], pad_id=0)
    assert batch["guided"].tolist() == [0.0, 0.0, 1.0]
    # the reference puts -1.5 on every token: k1 of a policy sample = behaviour - ref = -1 + 1.5 = 0.5; the gold
    # row's zeros would give 1.5 and are left out of the mean, which stays 0.5
    batch["ref_logprobs"] = torch.full_like(batch["behavior_logprobs"], -1.5)
    kw = dict(whiten=False, kl_coef=0.1, kl_estimator="k1")
    adv, _, kl = batch_advantages(batch, "grpo_outcome", {"std_normalize": True}, kl_in="loss", **kw)
    assert kl == pytest.approx(0.5)
    # grpo_outcome over outcomes {0, 0, 1}: mean 1/3, unbiased std sqrt((1/9 + 1/9 + 4/9) / 2) = sqrt(1/3) = 0.57735
    # -> the gold gets (2/3) / 0.57735 = +1.15470 on its tokens, each failure (-1/3) / 0.57735 = -0.57735
    assert adv[:, 1:].flatten().tolist() == pytest.approx([-0.57735] * 4 + [1.15470] * 2, abs=1e-5)
    with pytest.raises(ValueError, match="behaviour log-probs"):
        batch_advantages(batch, "grpo_outcome", {"std_normalize": True}, kl_in="reward", **kw)
