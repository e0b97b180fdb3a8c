"""Reward transforms: named pure functions over step rewards.

Every transform takes `rewards [B, K]` (probabilities in [0, 1] from a PRM / verifier) and
`step_mask [B, K]` (1.0 for existing steps; it must be a prefix in each row: steps 0..K_b-1) and
returns a `[B, K]` tensor that is 0 wherever `step_mask == 0`. Pick one by name with
`apply_reward_transform(name, rewards, step_mask, **params)`; the names and the parameters' defaults are
in algo.registry.TRANSFORMS (the functions below take their parameters without defaults).

- identity: r.
- log_prob: max(log p + log_z, min_value). The rejection-sampling view: the policy that is optimal
  for this reward is proportional to pi_ref * p; log_z shifts, min_value keeps log 0 finite.
- linear: 2p - 1, so a sure-wrong step costs as much as a sure-right step earns.
- clip (Gao et al. 2410.15115, "Clip mechanism"): min(r - eta, 0). Every step reward is <= 0, so
  adding steps can never raise the return (repeating correct-looking steps stops paying); steps the
  PRM scores below eta are penalised by how far below they are.
- delta (Gao et al. 2410.15115, "Delta mechanism"): r_k - r_{k+1}. With `keep_last=True` (default)
  the last step keeps r_K, so the return-to-go from step k telescopes to r_k (bounded whatever the
  length). With `keep_last=False` the last step gets 0 (return-to-go r_k - r_K): the paper's figure
  drops the last step's delta and leaves the final step to the success reward.
- min_form (PURE, Cheng et al. 2504.15275): the credit of step k is min_{j >= k} r_j, i.e. a step
  is worth no more than the worst step still to come. Departure: PURE approximates the min with a
  softmin weighting at temperature T; we take the exact min (T -> 0). The output is a *credit*
  (return-to-go), meant for estimators that read a step's own reward (grpo_step, step_ppo). For
  estimators that sum rewards of later steps (grpo_process, gae), compose with delta:
  `delta(min_form(r))` has return-to-go exactly min_{j >= k} r_j.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from algo import registry
from algo.normalize import zero_masked


def _check_prefix(step_mask: Tensor) -> None:
    # Steps exist as a prefix 0..K_b-1; delta and min_form rely on "next step" meaning k+1.
    if step_mask.shape[-1] > 1 and bool((step_mask[:, 1:] > step_mask[:, :-1]).any()):
        raise ValueError("step_mask must be a prefix in every row (1.0 for steps 0..K_b-1, then 0.0)")


def identity(rewards: Tensor, step_mask: Tensor) -> Tensor:
    return zero_masked(rewards, step_mask)


def log_prob(rewards: Tensor, step_mask: Tensor, *, log_z: float, min_value: float) -> Tensor:
    tiny = torch.finfo(rewards.dtype).tiny  # log(0) -> very negative, then clipped to min_value
    out = torch.log(rewards.clamp_min(tiny)) + log_z
    return zero_masked(out.clamp_min(min_value), step_mask)


def linear(rewards: Tensor, step_mask: Tensor) -> Tensor:
    return zero_masked(2.0 * rewards - 1.0, step_mask)


def clip(rewards: Tensor, step_mask: Tensor, *, eta: float) -> Tensor:
    return zero_masked((rewards - eta).clamp_max(0.0), step_mask)


def delta(rewards: Tensor, step_mask: Tensor, *, keep_last: bool) -> Tensor:
    _check_prefix(step_mask)
    r = zero_masked(rewards, step_mask)
    nxt = torch.zeros_like(r)
    nxt[:, :-1] = r[:, 1:]  # masked steps hold 0, so the last real step sees r_{K+1} = 0
    out = r - nxt
    if not keep_last:
        is_last = step_mask - torch.cat([step_mask[:, 1:], torch.zeros_like(step_mask[:, :1])], dim=1)
        out = out * (1.0 - is_last)
    return zero_masked(out, step_mask)


def min_form(rewards: Tensor, step_mask: Tensor) -> Tensor:
    _check_prefix(step_mask)
    big = torch.where(step_mask > 0, rewards, torch.full_like(rewards, math.inf))
    suffix_min = torch.flip(torch.cummin(torch.flip(big, [1]), dim=1).values, [1])
    return zero_masked(suffix_min, step_mask)


# registry name -> the function of that name above
TRANSFORM_FNS: dict[str, Callable[..., Tensor]] = registry.bind(registry.TRANSFORMS, globals())


def apply_reward_transform(name: str, rewards: Tensor, step_mask: Tensor, **params: Any) -> Tensor:
    """Apply the transform registered as `name` with its default parameters updated by `params`;
    [B, K] in, [B, K] out, 0 on missing steps."""
    if name not in TRANSFORM_FNS:
        raise registry.unknown("reward transform", name, registry.TRANSFORMS)
    defaults = registry.TRANSFORMS[name].params
    extra = sorted(set(params) - set(defaults))
    if extra:
        raise ValueError(f"reward transform {name!r} has no parameters {extra}; it takes {sorted(defaults) or 'none'}")
    if rewards.shape != step_mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} and step_mask {tuple(step_mask.shape)} must both be [B, K]")
    return TRANSFORM_FNS[name](rewards, step_mask.to(rewards.dtype), **{**defaults, **params})
