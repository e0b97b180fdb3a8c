"""KL estimators per token (Schulman, "Approximating KL Divergence", 2020).

With samples x ~ pi (the policy that produced the tokens) and log r = ref_logprobs - logprobs:
- k1 = -log r                    unbiased, high variance, can be negative;
- k2 = (log r)^2 / 2             biased, low variance, >= 0;
- k3 = (r - 1) - log r           unbiased, low variance, >= 0 (the GRPO choice).
All estimate KL(pi || ref). Departure: log r is clamped to [-max_log_ratio, max_log_ratio] (default
20) before use, so k3's exp cannot overflow on a token the reference finds absurd.

Where KL goes is the caller's choice: in the loss (add beta * masked mean of kl_estimate), or in
the reward (`kl_in_reward(kl, coef)` gives token_rewards for algo.advantages.AdvantageInputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from algo import registry


def k1(log_ratio: Tensor) -> Tensor:
    return -log_ratio


def k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio**2


def k3(log_ratio: Tensor) -> Tensor:
    return torch.exp(log_ratio) - log_ratio - 1.0


# registry name -> the function of that name above
KL_FNS: dict[str, Callable[[Tensor], Tensor]] = registry.bind(registry.KL_ESTIMATORS, globals())


def kl_estimate(
    logprobs: Tensor, ref_logprobs: Tensor, kind: str, *, mask: Tensor | None = None, max_log_ratio: float = 20.0
) -> Tensor:
    """[B, T] per-token KL(pi || ref) estimate; 0 where mask == 0 (when a mask is given)."""
    if kind not in KL_FNS:
        raise registry.unknown("KL estimator", kind, registry.KL_ESTIMATORS)
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ")
    log_ratio = (ref_logprobs - logprobs).clamp(-max_log_ratio, max_log_ratio)
    kl = KL_FNS[kind](log_ratio)
    return kl if mask is None else torch.where(mask > 0, kl, torch.zeros_like(kl))


def kl_in_reward(kl: Tensor, coef: float) -> Tensor:
    """token_rewards = -coef * kl (KL as a per-token penalty in the reward), detached."""
    return -coef * kl.detach()
