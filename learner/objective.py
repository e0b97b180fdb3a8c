"""The policy objective of one micro-batch: PPO clip + KL to the reference - entropy bonus + SFT NLL.

    loss = policy_loss + kl_coef * KL(pi || ref) - entropy_coef * H(pi) + sft_coef * NLL(sft tokens)

PPO clipped surrogate (Schulman et al. 1707.06347) with clip-higher (DAPO 2503.14476) and dual clip
(1912.09729) from algo.losses, its ratio taken against the log-probs `off_policy` names (algo/offpolicy.py:
the learner's own at the start of the step, the generator's, or decoupled with an importance weight); KL in
the loss with a k1/k2/k3 estimator as in GRPO (DeepSeekMath 2402.03300 eq. 3, k3). Rows flagged in the batch's
"guided" column are gold samples (LUFFY 2504.14945, algo/guided.py): their policy term is -min(ratio, max_weight) * A,
unclipped, with the ratio against the same old log-probs. Policy, KL and entropy
terms share the aggregation `loss_agg` (token / step / sequence); the SFT NLL is a token mean over sft_mask
(a supervised loss has no steps).

Each term arrives pre-weighted (engine/batching.py): the caller passes the share of the global
mini-batch that this micro-batch holds, so the terms summed over micro-batches and ranks are exactly
the globally aggregated loss. Pure torch; no DeepSpeed, so it is tested in-process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from algo.batch import shift_logprobs, valid_token_mask
from algo.guided import guided_weight, weight_sums
from algo.kl import kl_estimate
from algo.losses import agg_units, aggregate, entropy_from_logits, policy_loss
from algo.offpolicy import ratio_base
from engine.batching import shift_right

REQUIRED_KEYS = (
    "input_ids",
    "attention_mask",
    "response_mask",
    "step_index",
    "behavior_logprobs",
    "advantages",
    "sample_valid",
)
# Sums over the guided rows' tokens of their weight min(ratio, max_weight), additive over micro-batches and ranks
# (algo.guided.weight_sums); and their max, which is not (the learner reduces it by max, learner/rank.py).
GUIDED_SUMS = ("guided/weight_sum", "guided/weight_sq_sum", "guided/tokens")
GUIDED_PEAK = "guided/weight_peak"


@dataclass(frozen=True)
class ObjectiveCoefs:
    """Plain numbers of the objective (kept together because every micro-batch needs all of them); the
    config validation checks their ranges, the algo functions their names."""

    clip_low: float
    clip_high: float
    dual_clip: float | None
    loss_agg: str
    entropy_coef: float
    kl_coef: float
    kl_estimator: str
    sft_coef: float
    off_policy: str = "recompute"  # what the PPO ratio is taken against (algo/offpolicy.py)
    tis_cap: float | None = None  # cap of the decoupled importance weight; None = uncapped
    guided_max_weight: float | None = None  # algo.guided.max_weight; None = algo.guided off (no row may be flagged)


def check_policy_batch(batch: dict, coefs: ObjectiveCoefs) -> None:
    """Fail early, naming the key, instead of training on a batch that silently lacks a term."""
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise KeyError(f"policy batch is missing {missing} (has {sorted(batch)})")
    if coefs.kl_coef > 0 and "ref_logprobs" not in batch:
        raise KeyError(
            "kl_coef > 0 but the batch has no 'ref_logprobs' (run the reference worker, or set "
            "kl_coef=0 when the KL goes into the reward)"
        )
    if coefs.sft_coef > 0 and "sft_mask" not in batch:
        raise KeyError("sft_coef > 0 but the batch has no 'sft_mask'")
    if coefs.guided_max_weight is not None and "guided" not in batch:
        raise KeyError("algo.guided is on (guided_max_weight) but the batch has no 'guided' column")


def units(batch: dict, coefs: ObjectiveCoefs) -> Tensor:
    """[3] = (policy aggregation units, SFT tokens, response tokens) of a (micro-)batch."""
    mask, step = valid_token_mask(batch), batch["step_index"]
    sft = valid_token_mask(batch, "sft_mask").sum() if "sft_mask" in batch else mask.new_zeros(())
    return torch.stack([agg_units(mask, step, coefs.loss_agg), sft, mask.sum()])


def micro_objective(
    logits: Tensor, micro: dict, old_logprobs: Tensor, weights: tuple[float, float, float], coefs: ObjectiveCoefs
) -> tuple[Tensor, dict[str, float]]:
    """Weighted loss of one micro-batch and its weighted metrics (sums over micro-batches are global).

    logits [b, L, V]; old_logprobs [b, L]; weights = (policy-term share, SFT share, token share).
    """
    w_pol, w_sft, w_tok = weights
    mask, step = valid_token_mask(micro), micro["step_index"]
    logprobs = shift_logprobs(logits, micro["input_ids"])  # [b, L]
    base, is_weight = ratio_base(coefs.off_policy, old_logprobs, micro["behavior_logprobs"].float(), coefs.tis_cap)
    pol, st = policy_loss(
        logprobs,
        base,
        micro["advantages"].float(),
        mask,
        step,
        clip_low=coefs.clip_low,
        clip_high=coefs.clip_high,
        dual_clip=coefs.dual_clip,
        agg=coefs.loss_agg,
        weight=is_weight,
        guided=micro.get("guided"),
        max_weight=coefs.guided_max_weight,
    )
    # Entropy of the distribution token t was drawn from lives at logits[t-1].
    with torch.set_grad_enabled(torch.is_grad_enabled() and coefs.entropy_coef > 0):
        ent = aggregate(shift_right(entropy_from_logits(logits)), mask, step, coefs.loss_agg)
    loss = w_pol * (pol - coefs.entropy_coef * ent)
    metrics = {
        "policy_loss": w_pol * float(pol.detach()),
        "entropy": w_pol * float(ent.detach()),
        "clip_frac": w_tok * st["clip_frac"],
        "approx_kl": w_tok * st["approx_kl"],
    }
    if coefs.guided_max_weight is not None:  # plain sums, not shares: they add up to the step's (algo/guided.py)
        with torch.no_grad():
            sums = weight_sums(guided_weight(logprobs - base, coefs.guided_max_weight), mask, micro["guided"])
        metrics.update(zip((*GUIDED_SUMS, GUIDED_PEAK), sums.tolist(), strict=True))
    if "ref_logprobs" in micro:
        kl = aggregate(
            kl_estimate(logprobs, micro["ref_logprobs"].float(), coefs.kl_estimator), mask, step, coefs.loss_agg
        )
        if coefs.kl_coef > 0:
            loss = loss + w_pol * coefs.kl_coef * kl
        metrics["kl"] = w_pol * float(kl.detach())
    if "sft_mask" in micro:
        nll = aggregate(-logprobs, valid_token_mask(micro, "sft_mask"), step, "token")
        if coefs.sft_coef > 0:
            loss = loss + w_sft * coefs.sft_coef * nll
        metrics["sft_nll"] = w_sft * float(nll.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
