"""Advantage estimators: worked examples (hand calculations in comments) and invariances."""

import math
import random
import statistics

import pytest
import torch

from algo import registry
from algo.advantages import AdvantageInputs, compute_advantages
from orchestrator.config import AlgoConfig

# The estimators' keyword parameters have no defaults (the config schema holds them): the invariance tests
# run every estimator with the config defaults; the worked examples spell out every parameter.
CONFIG_DEFAULTS = vars(AlgoConfig())


def config_params(name):
    return {k: CONFIG_DEFAULTS[k] for k in registry.ESTIMATORS[name].params}


def build(step_lens, step_rewards, outcome, group_ids, values=None, token_rewards=None, prompt=0, pad=0):
    """Inputs from per-sample step lengths; values / token_rewards are per real token lists."""
    B = len(step_lens)
    n = [sum(lens) for lens in step_lens]
    T, K = prompt + max(n) + pad, max(len(lens) for lens in step_lens)
    mask, sidx = torch.zeros(B, T), torch.full((B, T), -1, dtype=torch.long)
    vals, trew = torch.zeros(B, T), torch.zeros(B, T)
    srew, smask = torch.zeros(B, K), torch.zeros(B, K)
    for b, lens in enumerate(step_lens):
        t = prompt
        for k, length in enumerate(lens):
            mask[b, t : t + length] = 1.0
            sidx[b, t : t + length] = k
            t += length
        smask[b, : len(lens)] = 1.0
        srew[b, : len(lens)] = torch.tensor(step_rewards[b], dtype=torch.float32)
        if values is not None:
            vals[b, prompt : prompt + n[b]] = torch.tensor(values[b], dtype=torch.float32)
        if token_rewards is not None:
            trew[b, prompt : prompt + n[b]] = torch.tensor(token_rewards[b], dtype=torch.float32)
    return AdvantageInputs(
        mask=mask,
        step_index=sidx,
        step_rewards=srew,
        step_mask=smask,
        outcome=torch.tensor(outcome, dtype=torch.float32),
        group_ids=torch.tensor(group_ids),
        values=vals if values is not None else None,
        token_rewards=trew if token_rewards is not None else None,
    )


def real(x, mask):
    """Per-row lists of the values at real tokens."""
    rows = zip(x, mask, strict=True)
    return [[round(float(v), 5) for v, m in zip(row, mrow, strict=True) if m > 0] for row, mrow in rows]


def assert_rows(x, mask, expected, tol=1e-4):
    got = real(x, mask)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=tol), (got, expected)


# ------------------------------------------------------------------ worked examples

# Group 0: A has steps of 2 and 1 tokens, B has steps of 1, 1, 1 tokens. Group 1: C, one step, alone.
STEPS = [[2, 1], [1, 1, 1], [2]]
SREW = [[1.0, 0.0], [1.0, 1.0, 0.5], [0.3]]
OUT = [1.0, 0.0, 1.0]
GID = [0, 0, 1]


def test_grpo_outcome_worked():
    inp = build(STEPS, SREW, OUT, GID, prompt=2, pad=1)
    adv, ret = compute_advantages("grpo_outcome", inp, std_normalize=True, eps=0.0)
    # group 0: outcomes 1, 0: mean .5, unbiased std sqrt(.25 + .25) = .707107 -> +-.707107
    # group 1: C alone: 1 - 1 = 0
    assert ret is None
    assert_rows(adv, inp.mask, [[0.707107] * 3, [-0.707107] * 3, [0.0, 0.0]])
    adv, _ = compute_advantages("grpo_outcome", inp, std_normalize=False)
    assert_rows(adv, inp.mask, [[0.5] * 3, [-0.5] * 3, [0.0, 0.0]])


def test_grpo_outcome_adds_token_reward_return():
    inp = build(STEPS, SREW, OUT, GID, token_rewards=[[-0.1, -0.2, 0.0], [0.0, 0.0, -0.3], [0.0, 0.0]])
    adv, _ = compute_advantages("grpo_outcome", inp, std_normalize=True, eps=0.0)
    # A: .707107 + return-to-go of (-.1, -.2, 0) = (-.3, -.2, 0); B: -.707107 + (-.3, -.3, -.3)
    assert_rows(adv, inp.mask, [[0.407107, 0.507107, 0.707107], [-1.007107, -1.007107, -1.007107], [0.0, 0.0]])


# Group 0 steps: A (1, 0), B (1, 1, .5). All five: mean 3.5/5 = .7; deviations .3 -.7 .3 .3 -.2;
# squares .09 .49 .09 .09 .04 = .8; unbiased var .8/4 = .2; std .447214.
# normalised: .3/.447214 = .670820, -.7/.447214 = -1.565248, -.2/.447214 = -.447214.
# C alone: 0.
def test_grpo_process_worked():
    inp = build(STEPS, SREW, OUT, GID, prompt=1)
    adv, ret = compute_advantages("grpo_process", inp, std_normalize=True, outcome_weight=0.0, eps=0.0)
    # A: step 0 sums steps 0,1: .670820 - 1.565248 = -.894427 (2 tokens); step 1: -1.565248
    # B: step 0: .670820 + .670820 - .447214 = .894427; step 1: .670820 - .447214 = .223607; step 2: -.447214
    assert ret is None
    assert_rows(adv, inp.mask, [[-0.894427, -0.894427, -1.565248], [0.894427, 0.223607, -0.447214], [0.0, 0.0]])


def test_grpo_process_outcome_weight():
    inp = build(STEPS, SREW, OUT, GID)
    adv, _ = compute_advantages("grpo_process", inp, std_normalize=True, outcome_weight=1.0, eps=0.0)
    # outcome added to the last step: A (1, 0+1), B (1, 1, .5+0): all: 1 1 1 1 .5, mean .9,
    # deviations .1 .1 .1 .1 -.4, squares sum .2, var .05, std .223607: .447214 and -1.788854
    # A: (.447214 + .447214, .447214) ; B: (.447214*2 - 1.788854, .447214 - 1.788854, -1.788854)
    assert_rows(adv, inp.mask, [[0.894427, 0.894427, 0.447214], [-0.894427, -1.341641, -1.788854], [0.0, 0.0]])


def test_grpo_step_worked():
    inp = build(STEPS, SREW, OUT, GID, pad=2)
    adv, _ = compute_advantages("grpo_step", inp, std_normalize=True, outcome_weight=0.0, eps=0.0)
    # each token reads its own step's normalised reward (numbers above)
    assert_rows(adv, inp.mask, [[0.670820, 0.670820, -1.565248], [0.670820, 0.670820, -0.447214], [0.0, 0.0]])
    adv, _ = compute_advantages("grpo_step", inp, std_normalize=False, outcome_weight=0.0)
    # Dr. GRPO: deviations only
    assert_rows(adv, inp.mask, [[0.3, 0.3, -0.7], [0.3, 0.3, -0.2], [0.0, 0.0]])


def test_grpo_process_all_equal_steps_give_zero():
    inp = build([[1, 2], [3], [1, 1, 1]], [[0.7, 0.7], [0.7], [0.7, 0.7, 0.7]], [1.0, 0.0, 1.0], [5, 5, 5])
    for name in ("grpo_process", "grpo_step"):
        adv, _ = compute_advantages(name, inp, std_normalize=True, outcome_weight=0.0)
        assert adv.abs().max().item() == 0.0


# One sample, steps of 2 and 1 tokens, step rewards .5 and .2, outcome 1, values .1 .2 .3.
def gae_sample(**kw):
    return build([[2, 1]], [[0.5, 0.2]], [1.0], [0], values=[[0.1, 0.2, 0.3]], **kw)


def test_gae_worked():
    inp = gae_sample(prompt=2, pad=2)
    # token rewards: t0 0, t1 .5 (end of step 0), t2 .2 + 1 (end of step 1 + outcome)
    # gamma = lam = 1: returns 1.7 1.7 1.2; advantages = returns - values = 1.6 1.5 .9
    adv, ret = compute_advantages("gae", inp, gamma=1.0, lam=1.0, outcome_weight=1.0)
    assert_rows(adv, inp.mask, [[1.6, 1.5, 0.9]])
    assert_rows(ret, inp.mask, [[1.7, 1.7, 1.2]])
    # gamma .9, lam .8:  d2 = 1.2 - .3 = .9, A2 = .9
    # d1 = .5 + .9*.3 - .2 = .57, A1 = .57 + .72*.9 = 1.218
    # d0 = 0 + .9*.2 - .1 = .08, A0 = .08 + .72*1.218 = .95696 ; returns A + V
    adv, ret = compute_advantages("gae", inp, gamma=0.9, lam=0.8, outcome_weight=1.0)
    assert_rows(adv, inp.mask, [[0.95696, 1.218, 0.9]])
    assert_rows(ret, inp.mask, [[1.05696, 1.418, 1.2]])


def test_step_ppo_worked():
    inp = gae_sample(prompt=1)
    # episodes: step 0 = (t0, t1) with reward .5 on t1; step 1 = (t2) with reward .2 (outcome ignored)
    # t1: .5 - .2 = .3 ; t0: 0 + .2 - .1 + .3 = .4 ; t2: .2 - .3 = -.1
    # returns = A + V = .5 .5 .2: each step's value target is its own reward
    adv, ret = compute_advantages("step_ppo", inp, gamma=1.0, lam=1.0, outcome_weight=0.0)
    assert_rows(adv, inp.mask, [[0.4, 0.3, -0.1]])
    assert_rows(ret, inp.mask, [[0.5, 0.5, 0.2]])
    # outcome_weight=1 puts the outcome into the last step's episode: t2: 1.2 - .3 = .9
    adv, _ = compute_advantages("step_ppo", inp, gamma=1.0, lam=1.0, outcome_weight=1.0)
    assert_rows(adv, inp.mask, [[0.4, 0.3, 0.9]])


def test_pav_worked():
    inp = build([[1, 1], [1, 1, 1]], [[0.4, 0.8], [0.6, 0.3, 0.1]], [1.0, 0.0], [0, 0])
    adv, ret = compute_advantages("pav", inp, pav_alpha=0.5)
    # v_-1 = mean of first-step values (.4 + .6) / 2 = .5
    # prover advantages: A (.4-.5, .8-.4) = (-.1, .4); B (.6-.5, .3-.6, .1-.3) = (.1, -.3, -.2)
    # outcome advantages: 1 - .5 = .5, 0 - .5 = -.5
    # A: .5 + .5*(-.1) = .45, .5 + .5*.4 = .7 ; B: -.5 + .05 = -.45, -.5 - .15 = -.65, -.5 - .1 = -.6
    assert ret is None
    assert_rows(adv, inp.mask, [[0.45, 0.7], [-0.45, -0.65, -0.6]])


def test_rloo_worked():
    inp = build([[1], [2], [1], [1]], [[0.0], [0.0], [0.0], [0.0]], [1.0, 0.0, 0.5, 0.3], [0, 0, 0, 1])
    adv, _ = compute_advantages("rloo", inp)
    # baselines: (0 + .5)/2 = .25, (1 + .5)/2 = .75, (1 + 0)/2 = .5 ; alone -> 0
    assert_rows(adv, inp.mask, [[0.75], [-0.75, -0.75], [0.0], [0.0]])


def test_reinforce_pp_worked():
    inp = build([[2], [1]], [[0.0], [0.0]], [1.0, 0.0], [0, 1])
    adv, _ = compute_advantages("reinforce_pp", inp, gamma=1.0, std_normalize=True, eps=0.0)
    # returns 1 1 | 0; batch mean 2/3, unbiased var (1/9 + 1/9 + 4/9)/2 = 1/3, std .577350
    # (1 - 2/3)/.577350 = .577350 ; (0 - 2/3)/.577350 = -1.154701
    assert_rows(adv, inp.mask, [[0.577350, 0.577350], [-1.154701]])
    inp = build([[2], [1]], [[0.0], [0.0]], [1.0, 0.0], [0, 1], token_rewards=[[-0.1, -0.1], [-0.1]])
    adv, _ = compute_advantages("reinforce_pp", inp, gamma=1.0, std_normalize=True, eps=0.0)
    # returns: A (-.1 + -.1 + 1, -.1 + 1) = (.8, .9); B (-.1). mean 1.6/3 = .533333
    # deviations .266667 .366667 -.633333; squares .071111 .134444 .401111 = .606667; var .303333
    # std .550757 -> .484183 .665754 -1.149937
    assert_rows(adv, inp.mask, [[0.484183, 0.665754], [-1.149937]])


def test_sample_valid_excludes_invalid_samples():
    inp = build([[1], [1], [2]], [[0.0], [0.0], [0.0]], [1.0, 0.0, float("nan")], [0, 0, 0])
    inp.sample_valid = torch.tensor([1.0, 1.0, 0.0])
    for name, params in (
        ("grpo_outcome", dict(std_normalize=True, eps=0.0)),
        ("rloo", {}),
        ("pav", dict(pav_alpha=1.0)),  # rloo and pav take no eps
        ("reinforce_pp", dict(gamma=1.0, std_normalize=True, eps=0.0)),
        ("grpo_process", dict(std_normalize=True, outcome_weight=0.0, eps=0.0)),
    ):
        adv, _ = compute_advantages(name, inp, **params)
        assert torch.isfinite(adv).all(), name
        assert adv[2].abs().sum().item() == 0.0, name
    adv, _ = compute_advantages("grpo_outcome", inp, std_normalize=True, eps=0.0)
    # the NaN sample takes no part: group (1, 0) -> +-.707107
    assert_rows(adv[:2], inp.mask[:2], [[0.707107], [-0.707107]])


# ------------------------------------------------------------------ random inputs, references


def random_inputs(seed, B=6, group=3):
    rng = random.Random(seed)
    steps = [[rng.randint(1, 3) for _ in range(rng.randint(1, 4))] for _ in range(B)]
    srew = [[round(rng.random(), 3) for _ in s] for s in steps]
    n = [sum(s) for s in steps]
    return build(
        steps,
        srew,
        [float(rng.random() < 0.5) for _ in range(B)],
        [b // group for b in range(B)],
        values=[[rng.uniform(-1, 1) for _ in range(k)] for k in n],
        token_rewards=[[rng.uniform(-0.1, 0.0) for _ in range(k)] for k in n],
    )


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
        got, _ = compute_advantages(name, inp, std_normalize=True, outcome_weight=0.0, eps=1e-6)
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
        ("grpo_step", False, dict(std_normalize=True, outcome_weight=0.0)),
        ("step_ppo", False, dict(gamma=1.0, lam=0.95, outcome_weight=0.0)),
        ("grpo_process", True, dict(std_normalize=True, outcome_weight=0.0)),
        ("gae", True, dict(gamma=1.0, lam=0.95, outcome_weight=1.0)),
    ):
        a1, _ = compute_advantages(name, base, **params)
        a2, _ = compute_advantages(name, swapped, **params)
        same = torch.allclose(a1[0][early], a2[0][early], atol=1e-6)
        assert same != moves, name
        assert not torch.allclose(a1[0][_step_tokens(base, 0, 2)], a2[0][_step_tokens(base, 0, 2)])


# ------------------------------------------------------------------ errors


def test_errors_name_the_field():
    inp = random_inputs(0)
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo2'; valid: .*grpo_process"):
        compute_advantages("ppo2", inp)
    no_values = AdvantageInputs(inp.mask, inp.step_index, inp.step_rewards, inp.step_mask, inp.outcome, inp.group_ids)
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", no_values, gamma=1.0, lam=0.95, outcome_weight=1.0)
    bad = AdvantageInputs(inp.mask, inp.step_index, inp.step_rewards, inp.step_mask, inp.outcome[:2], inp.group_ids)
    with pytest.raises(ValueError, match="outcome"):
        compute_advantages("rloo", bad)
    bad = AdvantageInputs(inp.mask, inp.step_index, inp.step_rewards, inp.step_mask, inp.outcome, inp.group_ids.float())
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages("rloo", bad)
    sm = inp.step_mask.clone()
    sm[:, 0] = 0.0
    bad = AdvantageInputs(inp.mask, inp.step_index, inp.step_rewards, sm, inp.outcome, inp.group_ids)
    with pytest.raises(ValueError, match="step_mask"):
        compute_advantages("grpo_step", bad, std_normalize=True, outcome_weight=0.0)
    assert math.isfinite(compute_advantages("grpo_step", inp, std_normalize=True, outcome_weight=0.0)[0].sum().item())
