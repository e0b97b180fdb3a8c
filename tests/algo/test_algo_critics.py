"""One critic per reward (algo.critics): per-critic GAE / step PPO summed with weights, worked by hand, and the
linearity that makes the split exact (GAE of a sum = sum of the GAEs)."""

from dataclasses import replace

import pytest
import torch
from advantage_cases import assert_rows, build, random_inputs

from algo.advantages import compute_advantages
from algo.critics import critic_advantages

# One sample, steps of 2 and 1 tokens, step rewards .5 and .2, outcome 1; process critic values .1 .2 .3,
# outcome critic values .4 .5 .6.
VP, VO = [[0.1, 0.2, 0.3]], [[0.4, 0.5, 0.6]]


def sample(prompt=0, pad=0):
    inp = build([[2, 1]], [[0.5, 0.2]], [1.0], [0], prompt=prompt, pad=pad)
    values = {
        "process": build([[2, 1]], [[0.0, 0.0]], [0.0], [0], values=VP, prompt=prompt, pad=pad).values,
        "outcome": build([[2, 1]], [[0.0, 0.0]], [0.0], [0], values=VO, prompt=prompt, pad=pad).values,
    }
    return inp, values


def test_gae_per_critic_worked():
    inp, values = sample(prompt=2, pad=1)
    adv, ret = critic_advantages(
        "gae", inp, {"process": 1.0, "outcome": 0.5}, values, gamma=0.9, lam=0.8, outcome_weight=1.0
    )
    # process critic: rewards 0, .5, .2 (each step's reward on its end token, no outcome), V .1 .2 .3
    #   d2 = .2 - .3 = -.1                      A2 = -.1
    #   d1 = .5 + .9*.3 - .2 = .57              A1 = .57 + .72*(-.1) = .498
    #   d0 = 0 + .9*.2 - .1 = .08               A0 = .08 + .72*.498 = .43856
    #   returns A + V: .53856 .698 .2
    # outcome critic: rewards 0, 0, 1 (the outcome on the last token, no step rewards), V .4 .5 .6
    #   d2 = 1 - .6 = .4                        A2 = .4
    #   d1 = 0 + .9*.6 - .5 = .04               A1 = .04 + .72*.4 = .328
    #   d0 = 0 + .9*.5 - .4 = .05               A0 = .05 + .72*.328 = .28616
    #   returns A + V: .68616 .828 1.0
    # policy: 1.0 * process + 0.5 * outcome = .43856 + .14308, .498 + .164, -.1 + .2
    assert_rows(adv, inp.mask, [[0.58164, 0.662, 0.1]])
    assert_rows(ret["process"], inp.mask, [[0.53856, 0.698, 0.2]])
    assert_rows(ret["outcome"], inp.mask, [[0.68616, 0.828, 1.0]])
    # the same as one critic on the reward .5 / .2 + 0.5 * outcome with values V_p + 0.5 * V_o = .3 .45 .6:
    # d2 = .2 + .5 - .6 = .1; d1 = .5 + .9*.6 - .45 = .59, A1 = .59 + .72*.1 = .662; A0 = .105 + .72*.662
    one = replace(inp, values=values["process"] + 0.5 * values["outcome"])
    combined, _ = compute_advantages("gae", one, gamma=0.9, lam=0.8, outcome_weight=0.5)
    assert torch.allclose(adv, combined, atol=1e-6)
    assert float(adv[:, :2].abs().sum() + adv[:, -1].abs().sum()) == 0.0  # 0 on prompt and padding


def test_step_ppo_per_critic_worked():
    inp, values = sample()
    adv, ret = critic_advantages(
        "step_ppo", inp, {"process": 1.0, "outcome": 1.0}, values, gamma=1.0, lam=1.0, outcome_weight=1.0
    )
    # episodes: step 0 = (t0, t1), step 1 = (t2)
    # process: t1: .5 - .2 = .3; t0: 0 + .2 - .1 + .3 = .4; t2: .2 - .3 = -.1; returns .5 .5 .2
    # outcome: the outcome sits on t2, the end of the last step's episode; step 0's episode has no reward:
    #   t1: 0 - .5 = -.5; t0: 0 + .5 - .4 - .5 = -.4; t2: 1 - .6 = .4; returns 0 0 1
    # policy: .4 - .4, .3 - .5, -.1 + .4
    assert_rows(adv, inp.mask, [[0.0, -0.2, 0.3]])
    assert_rows(ret["process"], inp.mask, [[0.5, 0.5, 0.2]])
    assert_rows(ret["outcome"], inp.mask, [[0.0, 0.0, 1.0]])


@pytest.mark.parametrize("name", ["gae", "step_ppo"])
@pytest.mark.parametrize("w_process, w_outcome", [(1.0, 1.0), (0.7, 2.0), (1.0, 0.0)])
def test_weighted_sum_of_critics_is_one_critic_on_the_weighted_sums(name, w_process, w_outcome):
    # GAE is linear in (rewards, values) over the same tokens and episode ends:
    # sum_i w_i * gae(r_i, V_i) == gae(sum_i w_i * r_i, sum_i w_i * V_i)
    for seed in range(5):
        inp = replace(random_inputs(seed), token_rewards=None)
        inp = replace(inp, sample_valid=torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]))  # an invalid sample: 0
        g = torch.Generator().manual_seed(seed)
        values = {r: torch.randn(inp.mask.shape, generator=g) * inp.mask for r in ("process", "outcome")}
        params = dict(gamma=0.9, lam=0.8, outcome_weight=1.0)
        adv, _ = critic_advantages(name, inp, {"process": w_process, "outcome": w_outcome}, values, **params)
        one = replace(
            inp,
            step_rewards=w_process * inp.step_rewards,
            values=w_process * values["process"] + w_outcome * values["outcome"],
        )
        combined, _ = compute_advantages(name, one, **{**params, "outcome_weight": w_outcome})
        assert torch.allclose(adv, combined, atol=1e-5), (seed, (adv - combined).abs().max())
        assert float(adv[2].abs().sum()) == 0.0


@pytest.mark.parametrize("name", ["gae", "step_ppo"])
def test_a_single_process_critic_is_the_estimator_without_outcome(name):
    # one critic on the step rewards with weight 1 is exactly the estimator with outcome_weight=0; its returns
    # are the estimator's returns
    inp = replace(random_inputs(3), token_rewards=None)
    params = dict(gamma=1.0, lam=0.95, outcome_weight=1.0)  # the config's outcome_weight is replaced by 0
    adv, ret = critic_advantages(name, inp, {"process": 1.0}, {"process": inp.values}, **params)
    expected, expected_ret = compute_advantages(name, inp, **{**params, "outcome_weight": 0.0})
    assert torch.equal(adv, expected) and torch.equal(ret["process"], expected_ret)


def test_errors_name_what_is_wrong():
    inp, values = sample()
    params = dict(gamma=1.0, lam=1.0, outcome_weight=1.0)
    with pytest.raises(ValueError, match="critic estimator .*grpo_process"):
        critic_advantages(
            "grpo_process", inp, {"process": 1.0}, values, std_normalize=True, outcome_weight=1.0, clip_normalized=False
        )
    with pytest.raises(ValueError, match="must name the same rewards"):
        critic_advantages("gae", inp, {"process": 1.0}, values, **params)
    with pytest.raises(ValueError, match="unknown critic reward 'all'"):
        critic_advantages("gae", inp, {"all": 1.0}, {"all": values["process"]}, **params)
    kl = replace(inp, token_rewards=torch.full_like(inp.mask, -0.01))
    with pytest.raises(ValueError, match="token_rewards"):
        critic_advantages("gae", kl, {"process": 1.0, "outcome": 1.0}, values, **params)
