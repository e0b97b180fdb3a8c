"""Advantage estimators: one registry, one signature.

    compute_advantages(name, AdvantageInputs, **params) -> (advantages [B, T], returns [B, T] | None)

The names, what each estimator needs and which config fields it takes are in algo.registry.ESTIMATORS;
those keyword arguments have no defaults here (the config schema holds them), only numerical constants do.
With one critic per reward (algo.critics), algo.critics.critic_advantages runs gae / step_ppo once per critic and sums.

Tokens may sit anywhere along T (prompt tokens masked at the front, padding at the end, even holes
in between): every estimator reads real tokens only, scans jump over masked ones, and the outputs are
0 on masked tokens. Shared conventions:
- step k of sample b holds the tokens with step_index == k; its *end token* is the last of them;
  step_mask must be a prefix in each row (steps 0..K_b-1);
- group statistics follow algo.normalize (unbiased std, (x - mean) / (std + eps), Dr. GRPO with
  std_normalize=False);
- `sample_valid` (optional, [B]) marks samples whose rewards are valid (Trajectory.sample_valid);
  an invalid sample takes no part in any group or batch statistic and gets zero advantages;
- `token_rewards` (e.g. -kl_coef * kl when KL is in the reward) is never dropped: PPO estimators
  (gae, step_ppo) add it to the per-token reward; reinforce_pp puts it in the return; the outcome /
  step baselines (grpo_*, rloo, pav) add its undiscounted return-to-go to the advantage after
  normalisation, as OpenRLHF does for RLOO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from algo import registry
from algo.normalize import (
    group_baseline,
    group_normalize,
    leave_one_out_baseline,
    masked_mean,
    masked_var,
    safe_scale,
    zero_masked,
)

# (advantages [B, T], returns [B, T] for the critic or None)
Estimate = tuple[Tensor, Tensor | None]


@dataclass
class AdvantageInputs:
    mask: Tensor  # [B, T] 1.0 on response tokens
    step_index: Tensor  # [B, T] long, step k of each token, -1 on masked tokens
    step_rewards: Tensor  # [B, K] per-step rewards (after transform), 0 where step_mask == 0
    step_mask: Tensor  # [B, K] 1.0 for existing steps
    outcome: Tensor  # [B] outcome reward
    group_ids: Tensor  # [B] long, same prompt -> same id
    values: Tensor | None = None  # [B, T] critic values (gae, step_ppo)
    token_rewards: Tensor | None = None  # [B, T] extra per-token rewards, e.g. -kl_coef * kl
    sample_valid: Tensor | None = None  # [B] 1.0 where the rewards are valid (default: all valid)


# ---------------------------------------------------------------- token / step helpers


def _token_mask(inp: AdvantageInputs) -> Tensor:
    """[B, T] real tokens of valid samples."""
    m = inp.mask.float()
    return m if inp.sample_valid is None else m * inp.sample_valid.float()[:, None]


def _sample_weight(inp: AdvantageInputs) -> Tensor:
    return torch.ones_like(inp.outcome) if inp.sample_valid is None else inp.sample_valid.to(inp.outcome.dtype)


def _per_token(step_vals: Tensor, inp: AdvantageInputs, m: Tensor) -> Tensor:
    """[B, K] step values -> [B, T]: each real token reads its own step's value."""
    return zero_masked(step_vals.gather(1, inp.step_index.clamp_min(0)), m)


def _step_end_tokens(inp: AdvantageInputs, m: Tensor) -> Tensor:
    """[B, T] 1.0 on the last real token of every step."""
    B, T = m.shape
    K = inp.step_mask.shape[1]
    pos = torch.arange(T, device=m.device).expand(B, T)
    idx = torch.where(m > 0, inp.step_index, torch.full_like(inp.step_index, K))  # column K = bin
    last = torch.full((B, K + 1), -1, dtype=torch.long, device=m.device)
    last = last.scatter_reduce(1, idx, pos, reduce="amax", include_self=True)
    return ((last.gather(1, idx) == pos) & (m > 0)).float()


def _last_tokens(m: Tensor) -> Tensor:
    """[B, T] 1.0 on the last real token of each row."""
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m > 0, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
    return ((pos == last) & (m > 0)).float()


def _last_steps(step_mask: Tensor) -> Tensor:
    """[B, K] 1.0 on the last existing step of each row (step_mask is a prefix)."""
    nxt = torch.cat([step_mask[:, 1:], torch.zeros_like(step_mask[:, :1])], dim=1)
    return step_mask - nxt


def gae_scan(
    rewards: Tensor, values: Tensor, mask: Tensor, episode_end: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Masked GAE (Schulman et al. 1506.02438) over [B, T], batched over rows, backward over T.

    Masked tokens are skipped: the running (next value, gae) passes through them unchanged.
    `episode_end` marks a real token after which the episode stops (next value 0, gae reset).
    Returns (advantages, returns = advantages + values), 0 on masked tokens.
    """
    B, T = rewards.shape
    rewards, values = zero_masked(rewards, mask), zero_masked(values, mask)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros_like(next_value)
    adv = torch.zeros_like(rewards)
    for t in range(T - 1, -1, -1):
        real, end = mask[:, t] > 0, episode_end[:, t] > 0
        nv = torch.where(end, torch.zeros_like(next_value), next_value)
        run = torch.where(end, torch.zeros_like(running), running)
        step_adv = rewards[:, t] + gamma * nv - values[:, t] + gamma * lam * run
        adv[:, t] = torch.where(real, step_adv, torch.zeros_like(step_adv))
        running = torch.where(real, step_adv, running)
        next_value = torch.where(real, values[:, t], next_value)
    return adv, zero_masked(adv + values, mask)


def returns_to_go(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """[B, T] discounted sum of the rewards of this and later real tokens of the row."""
    zeros = torch.zeros_like(rewards)
    return gae_scan(rewards, zeros, mask, _last_tokens(mask), gamma, 1.0)[0]


def _token_reward_return(inp: AdvantageInputs, m: Tensor) -> Tensor:
    if inp.token_rewards is None:
        return torch.zeros_like(m)
    return returns_to_go(inp.token_rewards.float(), m)


def _step_normalized(
    inp: AdvantageInputs, eps: float, std_normalize: bool, outcome_weight: float, clip_normalized: bool
) -> Tensor:
    """[B, K] step rewards normalised over all steps of each group (DeepSeekMath 4.1.3).

    clip_normalized=False: the outcome (times outcome_weight) is added to the last step's reward, then every
    step of the group is normalised together.
    clip_normalized=True: the clip mechanism of Gao et al. (2410.15115) moved past the group statistics.
    Normalisation re-centres rewards, so a clip before it (reward.transform=clip) no longer keeps every step
    reward <= 0; here the normalised step rewards themselves are clipped, min(r_norm, 0), and a step can only
    cost. The outcome, normalised on its own over the group's samples as in grpo_outcome, is then added to the
    last step: clipping it too would drop the success signal, which the paper keeps outside the clip.
    """
    sm = inp.step_mask.float() * _sample_weight(inp)[:, None]
    r = inp.step_rewards.float()
    last = _last_steps(inp.step_mask.float())
    gid = inp.group_ids[:, None].expand_as(r)

    def normalize(x: Tensor) -> Tensor:
        flat = group_normalize(x.flatten(), gid.flatten(), sm.flatten(), eps=eps, std_normalize=std_normalize)
        return flat.view_as(x)

    if not clip_normalized:
        return normalize(r + outcome_weight * inp.outcome.float()[:, None] * last)
    o = group_normalize(inp.outcome.float(), inp.group_ids, _sample_weight(inp), eps=eps, std_normalize=std_normalize)
    return normalize(r).clamp_max(0.0) + outcome_weight * o[:, None] * last


# ---------------------------------------------------------------- estimators


def grpo_outcome(inp: AdvantageInputs, *, std_normalize: bool, eps: float = 1e-6) -> Estimate:
    """GRPO with outcome supervision (DeepSeekMath, Shao et al. 2402.03300, section 4.1.2).

    Every token of sample i gets (o_i - mean(o_group)) / (std(o_group) + eps).
    """
    m = _token_mask(inp)
    a = group_normalize(inp.outcome.float(), inp.group_ids, _sample_weight(inp), eps=eps, std_normalize=std_normalize)
    return a[:, None] * m + _token_reward_return(inp, m), None


def grpo_process(
    inp: AdvantageInputs, *, std_normalize: bool, outcome_weight: float, clip_normalized: bool, eps: float = 1e-6
) -> Estimate:
    """GRPO with process supervision (DeepSeekMath 2402.03300, section 4.1.3).

    Step rewards are normalised over all steps of all samples of the group; a token's advantage is
    the sum of the normalised rewards of the steps ending at or after it (its own step and later).
    The paper uses process rewards only (outcome_weight=0); outcome_weight > 0 adds
    outcome_weight * outcome to the last step's reward before normalisation; clip_normalized=True clips the
    normalised step rewards at 0 instead and adds the separately normalised outcome (see _step_normalized).
    """
    m = _token_mask(inp)
    rn = _step_normalized(inp, eps, std_normalize, outcome_weight, clip_normalized)
    future = torch.flip(torch.cumsum(torch.flip(rn, [1]), dim=1), [1])  # sum over steps j >= k
    return _per_token(future, inp, m) + _token_reward_return(inp, m), None


def grpo_step(
    inp: AdvantageInputs, *, std_normalize: bool, outcome_weight: float, clip_normalized: bool, eps: float = 1e-6
) -> Estimate:
    """Step-isolated GRPO: the normalisation of DeepSeekMath 4.1.3, but a token sees only its own step.

    Departure from the paper (on purpose): no sum over later steps, so a correct step is not
    charged for later mistakes and a wrong step is not forgiven by later fixes.
    """
    m = _token_mask(inp)
    rn = _step_normalized(inp, eps, std_normalize, outcome_weight, clip_normalized)
    return _per_token(rn, inp, m) + _token_reward_return(inp, m), None


def _need_values(inp: AdvantageInputs, name: str) -> Tensor:
    if inp.values is None:
        raise ValueError(f"AdvantageInputs.values is None: estimator {name!r} needs critic values [B, T]")
    return inp.values.float()


def _step_end_rewards(inp: AdvantageInputs, m: Tensor, outcome_weight: float) -> Tensor:
    """[B, T] step reward on each step's end token, outcome on the last token, plus token rewards."""
    r = _per_token(inp.step_rewards.float(), inp, m) * _step_end_tokens(inp, m)
    if outcome_weight:
        r = r + outcome_weight * inp.outcome.float()[:, None] * _last_tokens(m)
    if inp.token_rewards is not None:
        r = r + zero_masked(inp.token_rewards.float(), m)
    return r


def gae(inp: AdvantageInputs, *, gamma: float, lam: float, outcome_weight: float) -> Estimate:
    """Token-level GAE (Schulman et al. 1506.02438) with process rewards, as in the step-by-step PPO
    of Math-Shepherd (Wang et al. 2312.08935): each step reward sits on the step's end token, the
    outcome (times outcome_weight) on the last token; the response is one episode (a truncated
    response is treated as terminal: no bootstrap). Returns = advantages + values, for the critic.
    """
    m = _token_mask(inp)
    r = _step_end_rewards(inp, m, outcome_weight)
    return gae_scan(r, _need_values(inp, "gae"), m, _last_tokens(m), gamma, lam)


def step_ppo(inp: AdvantageInputs, *, gamma: float, lam: float, outcome_weight: float) -> Estimate:
    """GAE inside each step only: every step is an episode whose reward (the step reward) sits on its
    last token, so a step's value target is its own reward and no reward crosses a step boundary.
    Reading of Math-Shepherd's step PPO (2312.08935) with step-isolated credit; outcome_weight > 0
    adds the outcome to the last step's episode. Returns = advantages + values, for the critic.
    """
    m = _token_mask(inp)
    r = _step_end_rewards(inp, m, outcome_weight)
    return gae_scan(r, _need_values(inp, "step_ppo"), m, _step_end_tokens(inp, m), gamma, lam)


def pav(inp: AdvantageInputs, *, pav_alpha: float) -> Estimate:
    """Process advantage verifiers (Setlur et al. 2410.08146): effective advantage of step k is
    A^pi + pav_alpha * A^mu_k.

    step_rewards hold the prover values v_k = P(a prover rollout from the prefix ending at step k
    is correct). Prover advantage of step k: A^mu_k = v_k - v_{k-1}, the progress the step makes.
    v_{-1} (the value of the bare question) is estimated by the group mean of v_0. The outcome term
    Q^pi is estimated by this sample's outcome, with the group mean outcome as baseline:
    A^pi = o_i - mean(o_group) (a baseline changes no expectation and cuts variance).
    """
    m, w = _token_mask(inp), _sample_weight(inp)
    sm = inp.step_mask.float() * w[:, None]
    v = zero_masked(inp.step_rewards.float(), sm)
    v_init = group_baseline(v[:, 0], inp.group_ids, sm[:, 0])
    prev = torch.cat([v_init[:, None], v[:, :-1]], dim=1)
    prover_adv = (v - prev) * sm
    outcome_adv = inp.outcome.float() - group_baseline(inp.outcome.float(), inp.group_ids, w)
    step_adv = outcome_adv[:, None] + pav_alpha * prover_adv
    return _per_token(step_adv, inp, m) + _token_reward_return(inp, m), None


def rloo(inp: AdvantageInputs) -> Estimate:
    """REINFORCE leave-one-out (Ahmadian et al. 2402.14740): o_i - mean of the other outcomes of the
    group, on every token. A sample alone in its group gets 0."""
    m, w = _token_mask(inp), _sample_weight(inp)
    o = inp.outcome.float()
    a = o - leave_one_out_baseline(o, inp.group_ids, w)
    return a[:, None] * m + _token_reward_return(inp, m), None


def reinforce_pp(
    inp: AdvantageInputs, *, gamma: float, std_normalize: bool, eps: float = 1e-6, group_baseline_first: bool = False
) -> Estimate:
    """REINFORCE++ (Hu 2501.03262): per-token return G_t = sum_{s>=t} gamma^(s-t) r_s with the
    outcome on the last token and token_rewards (the KL penalty) on every token, then normalised
    over all real tokens of the whole batch: (G - mean) / (std + eps) (global, not per group).
    group_baseline_first=True subtracts the group mean outcome first (the paper's
    "REINFORCE++-baseline" variant).
    """
    m, w = _token_mask(inp), _sample_weight(inp)
    o = inp.outcome.float()
    if group_baseline_first:
        o = o - group_baseline(o, inp.group_ids, w)
    r = o[:, None] * _last_tokens(m)
    if inp.token_rewards is not None:
        r = r + zero_masked(inp.token_rewards.float(), m)
    g = returns_to_go(r, m, gamma)
    a = g - masked_mean(g, m)
    if std_normalize:
        a = a / safe_scale(masked_var(g, m).sqrt(), eps)
    return zero_masked(a, m), None


# registry name -> the function of that name above
ESTIMATOR_FNS: dict[str, Callable[..., Estimate]] = registry.bind(registry.ESTIMATORS, globals())


# ---------------------------------------------------------------- entry point


def _check_shape(name: str, x: Tensor | None, shape: tuple[int, ...]) -> None:
    if x is not None and tuple(x.shape) != shape:
        raise ValueError(f"AdvantageInputs.{name} has shape {tuple(x.shape)}, expected {shape}")


def validate_inputs(inp: AdvantageInputs) -> None:
    """Shape, dtype and consistency checks; every error names the bad field."""
    if inp.mask.dim() != 2 or inp.step_rewards.dim() != 2:
        raise ValueError("AdvantageInputs.mask must be [B, T] and step_rewards [B, K]")
    (B, T), K = inp.mask.shape, inp.step_rewards.shape[1]
    if K == 0:
        raise ValueError("AdvantageInputs.step_rewards has K = 0 columns; pad to K >= 1 with step_mask 0")
    for name, shape in [
        ("step_index", (B, T)),
        ("values", (B, T)),
        ("token_rewards", (B, T)),
        ("step_rewards", (B, K)),
        ("step_mask", (B, K)),
        ("outcome", (B,)),
        ("group_ids", (B,)),
        ("sample_valid", (B,)),
    ]:
        _check_shape(name, getattr(inp, name), shape)
    for name in ("step_index", "group_ids"):
        if getattr(inp, name).dtype != torch.long:
            raise ValueError(f"AdvantageInputs.{name} must be torch.long, got {getattr(inp, name).dtype}")
    sm = inp.step_mask
    if K > 1 and bool((sm[:, 1:] > sm[:, :-1]).any()):
        raise ValueError("AdvantageInputs.step_mask must be a prefix in every row (steps 0..K_b-1)")
    real = inp.mask > 0
    k = inp.step_index[real]
    if k.numel() and (int(k.min()) < 0 or int(k.max()) >= K):
        raise ValueError(f"AdvantageInputs.step_index of a response token is outside [0, {K})")
    owner = sm.gather(1, inp.step_index.clamp(0, K - 1))
    if bool((real & (owner <= 0)).any()):
        raise ValueError("AdvantageInputs.step_index points a response token at a step with step_mask 0")


def compute_advantages(name: str, inputs: AdvantageInputs, **params: Any) -> Estimate:
    """returns (advantages [B,T], returns [B,T] or None); zero on masked tokens"""
    if name not in ESTIMATOR_FNS:
        raise registry.unknown("advantage estimator", name, registry.ESTIMATORS)
    validate_inputs(inputs)
    adv, ret = ESTIMATOR_FNS[name](inputs, **params)
    m = _token_mask(inputs)
    return zero_masked(adv, m), (None if ret is None else zero_masked(ret, m))
