"""Advantage estimators: worked examples (hand calculations in comments) and errors that name the field."""

import math

import pytest
import torch
from advantage_cases import assert_rows, build, random_inputs

from algo.advantages import AdvantageInputs, compute_advantages

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
    adv, ret = compute_advantages(
        "grpo_process", inp, std_normalize=True, outcome_weight=0.0, clip_normalized=False, eps=0.0
    )
    # A: step 0 sums steps 0,1: .670820 - 1.565248 = -.894427 (2 tokens); step 1: -1.565248
    # B: step 0: .670820 + .670820 - .447214 = .894427; step 1: .670820 - .447214 = .223607; step 2: -.447214
    assert ret is None
    assert_rows(adv, inp.mask, [[-0.894427, -0.894427, -1.565248], [0.894427, 0.223607, -0.447214], [0.0, 0.0]])


def test_grpo_process_outcome_weight():
    inp = build(STEPS, SREW, OUT, GID)
    adv, _ = compute_advantages(
        "grpo_process", inp, std_normalize=True, outcome_weight=1.0, clip_normalized=False, eps=0.0
    )
    # outcome added to the last step: A (1, 0+1), B (1, 1, .5+0): all: 1 1 1 1 .5, mean .9,
    # deviations .1 .1 .1 .1 -.4, squares sum .2, var .05, std .223607: .447214 and -1.788854
    # A: (.447214 + .447214, .447214) ; B: (.447214*2 - 1.788854, .447214 - 1.788854, -1.788854)
    assert_rows(adv, inp.mask, [[0.894427, 0.894427, 0.447214], [-0.894427, -1.341641, -1.788854], [0.0, 0.0]])


def test_grpo_step_worked():
    inp = build(STEPS, SREW, OUT, GID, pad=2)
    adv, _ = compute_advantages(
        "grpo_step", inp, std_normalize=True, outcome_weight=0.0, clip_normalized=False, eps=0.0
    )
    # each token reads its own step's normalised reward (numbers above)
    assert_rows(adv, inp.mask, [[0.670820, 0.670820, -1.565248], [0.670820, 0.670820, -0.447214], [0.0, 0.0]])
    adv, _ = compute_advantages("grpo_step", inp, std_normalize=False, outcome_weight=0.0, clip_normalized=False)
    # Dr. GRPO: deviations only
    assert_rows(adv, inp.mask, [[0.3, 0.3, -0.7], [0.3, 0.3, -0.2], [0.0, 0.0]])


def test_clip_after_normalisation_worked():
    inp = build(STEPS, SREW, OUT, GID)
    # normalised steps (above): A (.670820, -1.565248), B (.670820, .670820, -.447214); clipped at 0:
    # A (0, -1.565248), B (0, 0, -.447214). Outcomes normalised alone (grpo_outcome above): A +.707107,
    # B -.707107, added to the last step: A -1.565248 + .707107 = -.858141, B -.447214 - .707107 = -1.154321.
    # C alone: 0.
    adv, _ = compute_advantages("grpo_step", inp, std_normalize=True, outcome_weight=1.0, clip_normalized=True, eps=0.0)
    assert_rows(adv, inp.mask, [[0.0, 0.0, -0.858141], [0.0, 0.0, -1.154321], [0.0, 0.0]])
    # grpo_process sums the steps at and after a token's own: every step of A sums to -.858141, of B to -1.154321
    adv, _ = compute_advantages(
        "grpo_process", inp, std_normalize=True, outcome_weight=1.0, clip_normalized=True, eps=0.0
    )
    assert_rows(adv, inp.mask, [[-0.858141] * 3, [-1.154321] * 3, [0.0, 0.0]])


@pytest.mark.parametrize("seed", range(4))
def test_clip_after_normalisation_lets_steps_only_cost(seed):
    """Process rewards alone (outcome_weight=0): no token's advantage is positive, so no step can pay, whatever
    the rewards; the clip before normalisation (reward.transform=clip) cannot promise this."""
    inp = random_inputs(seed)
    for name in ("grpo_process", "grpo_step"):
        adv, _ = compute_advantages(name, inp, std_normalize=True, outcome_weight=0.0, clip_normalized=True)
        assert adv.max().item() <= 0.0
        unclipped, _ = compute_advantages(name, inp, std_normalize=True, outcome_weight=0.0, clip_normalized=False)
        assert unclipped.max().item() > 0.0


def test_grpo_process_all_equal_steps_give_zero():
    inp = build([[1, 2], [3], [1, 1, 1]], [[0.7, 0.7], [0.7], [0.7, 0.7, 0.7]], [1.0, 0.0, 1.0], [5, 5, 5])
    for name in ("grpo_process", "grpo_step"):
        adv, _ = compute_advantages(name, inp, std_normalize=True, outcome_weight=0.0, clip_normalized=False)
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
        ("grpo_process", dict(std_normalize=True, outcome_weight=0.0, clip_normalized=False, eps=0.0)),
    ):
        adv, _ = compute_advantages(name, inp, **params)
        assert torch.isfinite(adv).all(), name
        assert adv[2].abs().sum().item() == 0.0, name
    adv, _ = compute_advantages("grpo_outcome", inp, std_normalize=True, eps=0.0)
    # the NaN sample takes no part: group (1, 0) -> +-.707107
    assert_rows(adv[:2], inp.mask[:2], [[0.707107], [-0.707107]])


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
        compute_advantages("grpo_step", bad, std_normalize=True, outcome_weight=0.0, clip_normalized=False)
    assert math.isfinite(
        compute_advantages("grpo_step", inp, std_normalize=True, outcome_weight=0.0, clip_normalized=False)[0]
        .sum()
        .item()
    )
