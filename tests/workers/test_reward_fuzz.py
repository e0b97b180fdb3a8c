"""Fuzz of what the reward side sees: empty and non-UTF-8 responses, NaN / inf / out-of-range PRM scores.

Each bad score must mask its sample (counted, with its error); nothing may crash, and no NaN may reach the
advantages or the loss. Inputs come from seeded generators, and every expected count is computed from what
the generator made.
"""

import math
import random
from pathlib import Path

import pytest
import torch

from algo import registry
from algo.advantages import AdvantageInputs, compute_advantages
from algo.batch import collate, shift_logprobs, valid_token_mask
from algo.losses import policy_loss, value_loss
from algo.segment import byte_level_token_bytes, split_steps
from algo.trajectory import Trajectory
from orchestrator.config import AlgoConfig
from tasks.arithmetic import ArithmeticTask, prompt_text, solution_text

BASE_POLICY = str(Path(__file__).resolve().parents[2] / "tasks" / "assets" / "base_policy")
N_TRAJECTORIES = 1000
CONFIG_DEFAULTS = vars(AlgoConfig())  # the estimators take their parameters from the config, with its defaults


BAD_PRM = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "neg": -0.5, "big": 1.5}


@pytest.fixture(scope="module")
def tokenizer_bits():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE_POLICY)
    token_bytes = byte_level_token_bytes(tok.convert_ids_to_tokens(list(range(len(tok)))), tok.all_special_ids)
    return tok, token_bytes


def _response(rng, kind, problem, tok, token_bytes) -> tuple[list[int], str]:
    """Response token ids of one kind, and its finish_reason."""
    gold = tok.encode(solution_text(problem)) + [tok.eos_token_id]
    if kind == "empty":
        return [], rng.choice(["stop", "length"])
    if kind == "eos":
        return [tok.eos_token_id], "stop"
    if kind == "gold":
        return gold, "stop"
    if kind == "truncated":
        return gold[: rng.randint(1, len(gold) - 1)], "length"
    if kind == "random":
        return [rng.randrange(len(tok)) for _ in range(rng.randint(1, 60))], rng.choice(["stop", "length"])
    # "broken utf8": lone lead / continuation bytes of multi-byte characters spliced into a gold answer
    high = [i for i, b in enumerate(token_bytes) if len(b) == 1 and b[0] >= 0x80]
    ids = list(gold)
    for _ in range(rng.randint(1, 4)):
        ids.insert(rng.randint(0, len(ids)), rng.choice(high))
    return ids, "stop"


RESPONSE_KINDS = ["empty", "eos", "gold", "truncated", "random", "broken utf8"]


def fuzz_trajectories(tok, token_bytes, seed: int = 0):
    """N_TRAJECTORIES trajectories in groups of 1-6 (one prompt each), and the fake PRM's plan per uid."""
    rng = random.Random(seed)
    task = ArithmeticTask(min_steps=1, max_steps=5, seed=seed)
    trajs, plan, group = [], {}, 0
    while len(trajs) < N_TRAJECTORIES:
        problem = task.sample(1)[0]
        prompt = prompt_text(problem)
        all_bad = group % 25 == 0  # some groups where every sample is masked
        for i in range(min(rng.randint(1, 6), N_TRAJECTORIES - len(trajs))):
            ids, finish = _response(rng, rng.choice(RESPONSE_KINDS), problem, tok, token_bytes)
            uid = f"g{group}-{i}"
            trajs.append(
                Trajectory(
                    uid=uid,
                    prompt_id=problem.prompt_id,
                    group_id=group,
                    policy_version=0,
                    prompt_ids=tok.encode(prompt),
                    response_ids=ids,
                    behavior_logprobs=[-rng.expovariate(0.5) for _ in ids],
                    finish_reason=finish,
                    step_spans=split_steps(ids, token_bytes, "\n"),
                    prompt_text=prompt,
                    response_text=tok.decode(ids, skip_special_tokens=True),
                    answer=problem.answer,
                )
            )
            bad = all_bad or rng.random() < 0.25
            plan[uid] = rng.choice(sorted(BAD_PRM)) if bad else "valid"
        group += 1
    return trajs, plan


def fake_prm(plan: dict, calls: dict):
    """A step source that returns valid probabilities, or one bad value at a seeded step per the plan."""

    def prm(traj, step_texts):
        rng = random.Random(traj.uid)
        scores = [rng.random() for _ in step_texts]
        kind = plan[traj.uid]
        if kind != "valid":
            scores[rng.randrange(len(scores))] = BAD_PRM[kind]
            calls["bad"] += 1
        return scores

    return prm


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


@pytest.fixture(scope="module")
def scored(tokenizer_bits):
    from workers.reward import RewardWorker

    tok, token_bytes = tokenizer_bits
    trajs, plan = fuzz_trajectories(tok, token_bytes)
    worker = RewardWorker(
        tokenizer_dir=BASE_POLICY,
        sources=[{"name": "oracle"}, {"name": "outcome"}],
        meaning="step_correct",
        transform="identity",
        transform_params={},
        task_kind="arithmetic",
    )
    calls = {"bad": 0}
    worker.step_sources.append(("fake_prm", 1.0, fake_prm(plan, calls)))
    return [worker.score(t) for t in trajs], plan, calls, tok


def test_reward_fuzz_masks_exactly_the_bad_prm_outputs(scored):
    trajs, plan, calls, tok = scored
    # a 0-step response never reaches a step source, so its planned bad value is never produced
    expected_bad = sum(plan[t.uid] != "valid" and t.num_steps > 0 for t in trajs)
    masked = [t for t in trajs if not t.sample_valid]
    assert len(trajs) == N_TRAJECTORIES
    assert len(masked) == expected_bad == calls["bad"]
    n_empty = sum(t.num_steps == 0 for t in trajs)
    n_broken = sum("\ufffd" in t.response_text for t in trajs)
    print(
        f"{N_TRAJECTORIES} trajectories: {len(masked)} masked (bad PRM score), {n_empty} empty, "
        f"{n_broken} with invalid UTF-8"
    )
    for t in masked:
        error = t.info["reward_error"]
        assert "fake_prm" in error and repr(BAD_PRM[plan[t.uid]]) in error, error
        assert t.step_rewards == [0.0] * t.num_steps and t.outcome_reward == 0.0
    for t in trajs:
        assert all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in t.step_rewards), t.uid
        assert t.outcome_reward in (0.0, 1.0)
        if t.num_steps == 0:  # an empty response is a valid, wrong answer
            assert t.sample_valid and t.outcome_reward == 0.0 and t.step_rewards == []
    # the fuzz does reach the cases it is about
    assert n_empty > 0 and n_broken > 0
    assert sum(t.finish_reason == "length" for t in trajs) > 0
    assert any(t.outcome_reward == 1.0 for t in trajs)


def _advantage_inputs(batch, with_token_rewards: bool, seed: int) -> AdvantageInputs:
    B, T = batch["response_mask"].shape
    g = torch.Generator().manual_seed(seed)
    return AdvantageInputs(
        mask=batch["response_mask"],
        step_index=batch["step_index"],
        step_rewards=batch["step_rewards"],
        step_mask=batch["step_mask"],
        outcome=batch["outcome"],
        group_ids=batch["group_ids"],
        values=torch.zeros(B, T),
        token_rewards=(-0.01 * torch.rand(B, T, generator=g)) * batch["response_mask"] if with_token_rewards else None,
        sample_valid=batch["sample_valid"],
    )


@pytest.mark.parametrize("with_token_rewards", [False, True])
def test_fuzz_batch_advantages_and_loss_are_finite(scored, with_token_rewards):
    trajs, _, _, tok = scored
    batch = collate(trajs, tok.pad_token_id)
    valid = batch["sample_valid"]
    assert int((valid == 0).sum()) == sum(not t.sample_valid for t in trajs)
    logprobs = _random_logprobs(batch, seed=2)
    for name in sorted(registry.ESTIMATORS):
        adv, ret = compute_advantages(name, _advantage_inputs(batch, with_token_rewards, seed=1), **_params(name))
        assert _finite(adv), name
        assert ret is None or _finite(ret), name
        assert bool((adv[valid == 0] == 0).all()), f"{name}: masked samples must get zero advantages"
        _check_losses(name, batch, adv, ret, logprobs)


def _params(name: str) -> dict:
    return {k: CONFIG_DEFAULTS[k] for k in registry.ESTIMATORS[name].params}


def _random_logprobs(batch, seed: int) -> torch.Tensor:
    """Learner-side log-probs of the batch tokens under random logits (as shift_logprobs aligns them)."""
    g = torch.Generator().manual_seed(seed)
    ids = batch["input_ids"]
    logprobs = shift_logprobs(4.0 * torch.randn(*ids.shape, 261, generator=g), ids)
    assert _finite(logprobs)
    return logprobs


def _check_losses(name, batch, adv, ret, logprobs):
    """PPO policy loss (every aggregation, with and without dual clip) and value loss; loss, stats and the
    gradient w.r.t. the log-probs (what reaches the model) must be finite."""
    mask = valid_token_mask(batch)
    lp = logprobs.detach().requires_grad_()
    for agg in registry.LOSS_AGGREGATIONS:
        for dual in (None, 3.0):
            loss, stats = policy_loss(
                lp,
                batch["behavior_logprobs"],
                adv,
                mask,
                batch["step_index"],
                clip_low=0.2,
                clip_high=0.2,
                agg=agg,
                dual_clip=dual,
            )
            (grad,) = torch.autograd.grad(loss, lp)
            assert _finite(loss) and _finite(grad), (name, agg, dual)
            assert all(math.isfinite(v) for v in stats.values()), (name, agg, stats)
    if ret is not None:
        values = torch.randn(ret.shape, generator=torch.Generator().manual_seed(4)).requires_grad_()
        vloss, vstats = value_loss(
            values, torch.zeros(ret.shape), ret, mask, batch["step_index"], clip=0.2, agg="token"
        )
        (vgrad,) = torch.autograd.grad(vloss, values)
        assert _finite(vloss) and _finite(vgrad) and all(math.isfinite(v) for v in vstats.values()), name


def test_all_masked_batch_is_finite(scored):
    """A step where every sample is masked (a dead PRM) still gives finite, zero advantages and loss."""
    trajs, _, _, tok = scored
    batch = collate(trajs[:40], tok.pad_token_id)
    batch["sample_valid"] = torch.zeros_like(batch["sample_valid"])
    logprobs = _random_logprobs(batch, seed=5)
    for name in sorted(registry.ESTIMATORS):
        adv, ret = compute_advantages(name, _advantage_inputs(batch, True, seed=3), **_params(name))
        assert _finite(adv) and bool((adv == 0).all()), name
        assert ret is None or _finite(ret), name
        _check_losses(name, batch, adv, ret, logprobs)
