"""Off-policy correction: what the PPO ratio is taken against when the samples are older than the learner.

With asynchronous generation (train.max_staleness >= 1) a batch was sampled by the behaviour policy mu, up to
k versions older than the weights pi_old the learner holds when the step starts (the proximal policy). Three
choices, by name (algo.registry.OFF_POLICY), each returning (log-probs the ratio is taken against, weight):

- `recompute`: ratio pi_theta / pi_old, no weight. Plain PPO (Schulman et al. 1707.06347) with the old
  log-probs recomputed by the learner; it ignores any lag between mu and pi_old (exact when the batch is
  fresh, up to the sampler / learner numerical gap).
- `behavior`: ratio pi_theta / mu, the log-probs the generator recorded. The clip then also bounds how far the
  update may move from mu, so a stale batch is clipped more (the off-policy PPO of IMPALA-style learners).
- `decoupled`: ratio pi_theta / pi_old inside the clip, times the importance weight w = pi_old / mu outside it,
  with no gradient: decoupled PPO (AReaL, Fu et al. 2505.24298, eq. 5). With a cap, w = min(pi_old / mu, cap)
  is the truncated importance sampling of Yao et al. 2025 ("Your efficient RL framework secretly brings you
  off-policy RL training"), which corrects the sampler / learner mismatch as well as the lag.

Pure torch over [B, T] tensors; the weight is per token (the product over a sequence would explode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from algo import registry

_MAX_LOG_WEIGHT = 20.0  # as for the ratio in algo/losses.py: one absurd token must not give inf


def _recompute(old: Tensor, behavior: Tensor, cap: float | None) -> tuple[Tensor, Tensor | None]:
    return old, None


def _behavior(old: Tensor, behavior: Tensor, cap: float | None) -> tuple[Tensor, Tensor | None]:
    return behavior, None


def _decoupled(old: Tensor, behavior: Tensor, cap: float | None) -> tuple[Tensor, Tensor | None]:
    weight = (old - behavior).clamp(-_MAX_LOG_WEIGHT, _MAX_LOG_WEIGHT).exp().detach()
    return old, weight if cap is None else weight.clamp(max=cap)


_MODES: dict[str, Callable[[Tensor, Tensor, float | None], tuple[Tensor, Tensor | None]]] = registry.bind(
    registry.OFF_POLICY, globals(), "_"
)


def ratio_base(mode: str, old: Tensor, behavior: Tensor, cap: float | None = None) -> tuple[Tensor, Tensor | None]:
    """(log-probs [B, T] the PPO ratio is taken against, per-token weight [B, T] outside the clip or None).

    old: the learner's log-probs at the start of the step (pi_old); behavior: the generator's (mu).
    """
    if mode not in _MODES:
        raise registry.unknown("off-policy correction", mode, registry.OFF_POLICY)
    if cap is not None and cap <= 0:
        raise ValueError(f"importance weight cap must be > 0 (got {cap})")
    return _MODES[mode](old, behavior, cap)


def weight_sums(old: Tensor, behavior: Tensor, mask: Tensor, cap: float | None) -> Tensor:
    """[6] sums over real tokens (mask 1.0) of w = pi_old / mu, additive over micro-batches and ranks:
    (|log w|, tokens, |w - 1|, w - 1, (w - 1)^2, tokens with w > cap)."""
    log_w = (old - behavior).clamp(-_MAX_LOG_WEIGHT, _MAX_LOG_WEIGHT)
    dev = (log_w.exp() - 1.0) * mask
    truncated = (log_w.exp() > cap).to(mask.dtype) * mask if cap is not None else mask * 0.0
    return torch.stack(
        [(log_w.abs() * mask).sum(), mask.sum(), dev.abs().sum(), dev.sum(), (dev**2).sum(), truncated.sum()]
    )


def weight_stats(sums: Tensor) -> dict[str, float]:
    """Token means of weight_sums: `logprob_diff` (mean |log pi_old - log mu|: the sampler / learner gap plus the
    lag), the spread of w (mean |w - 1| and std), and the share of tokens whose weight the cap truncated."""
    s = [float(x) for x in sums]
    n = max(1.0, s[1])
    return {
        "logprob_diff": s[0] / n,
        "tokens": s[1],
        "offpolicy/ratio_abs_dev": s[2] / n,
        "offpolicy/ratio_std": max(0.0, s[4] / n - (s[3] / n) ** 2) ** 0.5,
        "offpolicy/truncated_frac": s[5] / n,
    }
