"""Advantage estimators: invariances (masked tokens, sample order), loop references and credit locality."""

import random
import statistics

import pytest
import torch
from advantage_cases import assert_rows, build, config_params, random_inputs, real

from algo import registry
from algo.advantages import AdvantageInputs, compute_advantages

# ------------------------------------------------------------------ random inputs, references


def embed(inp, seed):
    """Same samples, real tokens scattered among masked ones (front, holes, back) holding NaN."""
    rng = random.Random(seed)
    B, T = inp.mask.shape
    T2 = 2 * T + 3
    new = {k: torch.full((B, T2), float("nan")) for k in ("mask", "values", "token_rewards")}
    new["mask"].zero_()
    sidx = torch.full((B, T2), -1, dtype=torch.long)
    for b in range(B):
        src = [t for t in range(T) if inp.mask[b, t] > 0]
        dst = sorted(rng.sample(range(T2), len(src)))
        for s, d in zip(src, dst, strict=True):
            new["mask"][b, d] = 1.0
            sidx[b, d] = inp.step_index[b, s]
            new["values"][b, d] = inp.values[b, s]
            new["token_rewards"][b, d] = inp.token_rewards[b, s]
    return AdvantageInputs(
        mask=new["mask"],
        step_index=sidx,
        step_rewards=inp.step_rewards,
        step_mask=inp.step_mask,
        outcome=inp.outcome,
        group_ids=inp.group_ids,
        values=new["values"],
        token_rewards=new["token_rewards"],
    )


@pytest.mark.parametrize("name", sorted(registry.ESTIMATORS))
def test_masked_tokens_change_nothing(name):
    for seed in range(3):
        inp = random_inputs(seed)
        adv, ret = compute_advantages(name, inp, **config_params(name))
        wide = embed(inp, seed)
        adv2, ret2 = compute_advantages(name, wide, **config_params(name))
        assert torch.isfinite(adv2).all()
        assert (adv2[wide.mask == 0] == 0).all()
        assert_rows(adv2, wide.mask, real(adv, inp.mask), tol=1e-5)
        if ret is not None:
            assert_rows(ret2, wide.mask, real(ret, inp.mask), tol=1e-5)


@pytest.mark.parametrize("name", sorted(registry.ESTIMATORS))
def test_permuting_samples_permutes_results(name):
    inp = random_inputs(7)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    fields = ("mask", "step_index", "step_rewards", "step_mask", "outcome", "group_ids", "values", "token_rewards")
    shuffled = AdvantageInputs(**{f: getattr(inp, f)[perm] for f in fields})
    adv, ret = compute_advantages(name, inp, **config_params(name))
    adv_p, ret_p = compute_advantages(name, shuffled, **config_params(name))
    torch.testing.assert_close(adv_p, adv[perm])
    if ret is not None:
        torch.testing.assert_close(ret_p, ret[perm])


def ref_gae(inp, gamma, lam, outcome_weight, per_step):
    """Plain loops: rewards on step-end tokens (+ outcome on the last), backward GAE per episode."""
    B, T = inp.mask.shape
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        toks = [t for t in range(T) if inp.mask[b, t] > 0]
        k = [int(inp.step_index[b, t]) for t in toks]
        r, v = [], [float(inp.values[b, t]) for t in toks]
        for i, t in enumerate(toks):
            x = float(inp.token_rewards[b, t])
            if i == len(toks) - 1 or k[i + 1] != k[i]:
                x += float(inp.step_rewards[b, k[i]])
            if i == len(toks) - 1:
                x += outcome_weight * float(inp.outcome[b])
            r.append(x)
        running = 0.0
        for i in reversed(range(len(toks))):
            end = i == len(toks) - 1 or (per_step and k[i + 1] != k[i])
            next_v = 0.0 if end else v[i + 1]
            running = 0.0 if end else running
            running = r[i] + gamma * next_v - v[i] + gamma * lam * running
            adv[b][toks[i]] = running
    return torch.tensor(adv)


def ref_grpo_steps(inp, eps, cumulative):
    """Plain loops: normalise all steps of a group with statistics.stdev, then sum or not."""
    B, K = inp.step_mask.shape
    groups = {}
    for b in range(B):
        for k in range(K):
            if inp.step_mask[b, k] > 0:
                groups.setdefault(int(inp.group_ids[b]), []).append(float(inp.step_rewards[b, k]))
    norm = {}
    for b in range(B):
        vals = groups.get(int(inp.group_ids[b]), [])
        mean = sum(vals) / len(vals) if vals else 0.0
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        for k in range(K):
            if inp.step_mask[b, k] > 0:
                norm[b, k] = (float(inp.step_rewards[b, k]) - mean) / (std + eps)
    adv = torch.zeros_like(inp.mask)
    for b in range(B):
        for t in range(inp.mask.shape[1]):
            if inp.mask[b, t] > 0:
                k = int(inp.step_index[b, t])
                ks = range(k, K) if cumulative else [k]
                own = sum(norm.get((b, j), 0.0) for j in ks)
                later = sum(float(inp.token_rewards[b, s]) for s in range(t, inp.mask.shape[1]) if inp.mask[b, s] > 0)
                adv[b, t] = own + later
    return adv


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_equals_loop_reference(seed):
    inp = embed(random_inputs(seed), seed + 100)
    for name, per_step, ow in (("gae", False, 1.0), ("step_ppo", True, 0.0), ("step_ppo", True, 0.7)):
        got, _ = compute_advantages(name, inp, gamma=0.95, lam=0.9, outcome_weight=ow)
        torch.testing.assert_close(got, ref_gae(inp, 0.95, 0.9, ow, per_step), atol=1e-5, rtol=0)
    for name, cumulative in (("grpo_process", True), ("grpo_step", False)):
        got, _ = compute_advantages(name, inp, std_normalize=True, outcome_weight=0.0, clip_normalized=False, eps=1e-6)
        torch.testing.assert_close(got, ref_grpo_steps(inp, 1e-6, cumulative), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ credit locality


def _step_tokens(inp, b, k):
    return (inp.step_index[b] == k) & (inp.mask[b] > 0)


def test_step_isolated_estimators_do_not_move_reward_across_steps():
    # A has three steps; changing its step 2 reward must leave its steps 0 and 1 alone.
    # For the group-normalised estimators the change is a swap with B's step 0 reward, so the
    # group's multiset of step rewards (hence mean and std) is unchanged: only locality is tested.
    base = build(
        [[2, 1, 2], [1, 2]],
        [[0.9, 0.4, 0.1], [0.6, 0.3]],
        [1.0, 0.0],
        [0, 0],
        values=[[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3]],
    )
    swapped = build(
        [[2, 1, 2], [1, 2]],
        [[0.9, 0.4, 0.6], [0.1, 0.3]],
        [1.0, 0.0],
        [0, 0],
        values=[[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3]],
    )
    early = _step_tokens(base, 0, 0) | _step_tokens(base, 0, 1)
    for name, moves, params in (
        ("grpo_step", False, dict(std_normalize=True, outcome_weight=0.0, clip_normalized=False)),
        ("step_ppo", False, dict(gamma=1.0, lam=0.95, outcome_weight=0.0)),
        ("grpo_process", True, dict(std_normalize=True, outcome_weight=0.0, clip_normalized=False)),
        ("gae", True, dict(gamma=1.0, lam=0.95, outcome_weight=1.0)),
    ):
        a1, _ = compute_advantages(name, base, **params)
        a2, _ = compute_advantages(name, swapped, **params)
        same = torch.allclose(a1[0][early], a2[0][early], atol=1e-6)
        assert same != moves, name
        assert not torch.allclose(a1[0][_step_tokens(base, 0, 2)], a2[0][_step_tokens(base, 0, 2)])
