"""One critic per reward (algo.critics): an estimator of algo.advantages run once per critic, the parts summed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from algo import registry
from algo.advantages import AdvantageInputs, compute_advantages


def _reward_part(
    inp: AdvantageInputs, reward: str, values: Tensor, params: dict[str, Any]
) -> tuple[AdvantageInputs, dict[str, Any]]:
    """The inputs and estimator parameters of the critic of `reward`: that reward only, that critic's values."""
    if reward not in registry.CRITIC_REWARDS:
        raise registry.unknown("critic reward", reward, registry.CRITIC_REWARDS)
    if inp.token_rewards is not None:  # e.g. the KL penalty: a reward of neither part, so no critic predicts it
        raise ValueError("AdvantageInputs.token_rewards: with one critic per reward no critic predicts token rewards")
    if reward == "process":
        return replace(inp, values=values), {**params, "outcome_weight": 0.0}
    no_steps = torch.zeros_like(inp.step_rewards)
    return replace(inp, values=values, step_rewards=no_steps), {**params, "outcome_weight": 1.0}


def critic_advantages(
    name: str, inp: AdvantageInputs, weights: Mapping[str, float], values: Mapping[str, Tensor], **params: Any
) -> tuple[Tensor, dict[str, Tensor]]:
    """One critic per reward: the estimator `name` (gae or step_ppo) once per critic, on that critic's reward
    only and with that critic's values; the policy's advantage is sum_i weights[i] * A_i, and critic i learns
    its own returns A_i + V_i.

    Why: a step reward (one per reasoning step, summed along the response) and the outcome (one number at the
    end) mean different things and have different scales; one critic regressing their sum must fit both at
    once, and the larger, noisier one dominates its loss. GAE (Schulman et al. 1506.02438) is linear in
    (rewards, values): delta_t = r_t + gamma * V_{t+1} - V_t, so with r = r_process + r_outcome and
    V = V_process + V_outcome the advantages add up exactly, A = A_process + A_outcome, and each part can have
    a value function of its own, as in the Hybrid Reward Architecture (van Seijen et al. 1706.04208), which
    learns one value function per reward component. The weights scale the parts' advantages, not what the
    critics learn (each learns its reward at its own scale): weights (w_p, w_o) give the GAE of the reward
    w_p * r_process + w_o * r_outcome with values w_p * V_process + w_o * V_outcome.

    Rewards (algo.registry.CRITIC_REWARDS): "process" = the step rewards on their steps' end tokens, no
    outcome; "outcome" = the outcome on the last token, no step rewards. So the estimator's outcome_weight is
    fixed (0 and 1): the weights take its place. Token rewards belong to no part and are refused.
    weights: reward -> weight; values: reward -> [B, T] values of its critic (the same keys).
    Returns (advantages [B, T], reward -> returns [B, T]), 0 on masked tokens.
    """
    if name not in registry.ESTIMATORS or not registry.ESTIMATORS[name].needs_values:
        critics = [n for n, e in registry.ESTIMATORS.items() if e.needs_values]
        raise ValueError(f"one critic per reward needs a critic estimator ({', '.join(critics)}), got {name!r}")
    if not weights or set(weights) != set(values):
        raise ValueError(f"critic weights {sorted(weights)} and values {sorted(values)} must name the same rewards")
    total = torch.zeros(inp.mask.shape, dtype=torch.float32, device=inp.mask.device)
    returns: dict[str, Tensor] = {}
    for reward, weight in weights.items():
        part, part_params = _reward_part(inp, reward, values[reward], params)
        adv, ret = compute_advantages(name, part, **part_params)
        assert ret is not None  # a critic estimator returns its critic's targets
        total = total + weight * adv
        returns[reward] = ret
    return total, returns
