"""RewardWorker as a plain in-process class (no Ray): every number below is worked by hand.

The fuzz test (test_reward_fuzz.py) checks that nothing crashes or leaks NaN over random inputs; these tests
pin the exact values: which oracle label feeds which step reward, how sources are weighted, which transform
is applied with which parameters, and that every kind of broken source masks its sample instead of
becoming a number.

The task is ``3+4-2=`` mod 10 (gold: ``3+4=7 -2`` / ``7-2=5`` / ``A5``). WRONG makes its middle step wrong
(7-2=4) and then answers from that wrong value (A4): step_correct [1, 0, 1] (A4 correctly reports the value
the previous line wrote), prefix_correct [1, 0, 0], outcome wrong (4 != 5), format still ok.
"""

import math
import re
from pathlib import Path

import pytest

from algo.trajectory import Trajectory
from workers.reward import RewardWorker

BASE_POLICY = str(Path(__file__).resolve().parents[2] / "tasks" / "assets" / "base_policy")
PROMPT = "3+4-2=\n"
GOLD = ["3+4=7 -2\n", "7-2=5\n", "A5\n"]
WRONG = ["3+4=7 -2\n", "7-2=4\n", "A4\n"]


def make_worker(sources, meaning="step_correct", transform="identity", transform_params=None, task_kind="arithmetic"):
    return RewardWorker(
        tokenizer_dir=BASE_POLICY,
        sources=sources,
        meaning=meaning,
        transform=transform,
        transform_params=transform_params or {},
        task_kind=task_kind,
    )


def make_traj(tok, lines, prompt=PROMPT, answer="5") -> Trajectory:
    """A trajectory as the generator makes it: one step span per "\\n"-terminated line, EOS in the last."""
    ids, spans = [], []
    for line in lines:
        piece = tok.encode(line)
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    ids.append(tok.eos_token_id)
    spans[-1] = (spans[-1][0], len(ids))
    return Trajectory(
        uid="s0-p0-0",
        prompt_id="p0",
        group_id=0,
        policy_version=0,
        prompt_ids=tok.encode(prompt),
        response_ids=ids,
        behavior_logprobs=[-1.0] * len(ids),
        finish_reason="stop",
        step_spans=spans,
        prompt_text=prompt,
        response_text=tok.decode(ids, skip_special_tokens=True),
        answer=answer,
        info={"sample": 0},
    )


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BASE_POLICY)


def fixed(scores):
    """A fake step source returning `scores` whatever the trajectory."""
    return lambda traj, step_texts: list(scores)


def assert_masked(t: Trajectory, error: str) -> None:
    assert not t.sample_valid
    assert t.step_rewards == [0.0] * t.num_steps and t.outcome_reward == 0.0
    assert error in t.info["reward_error"], t.info["reward_error"]


# ---------------------------------------------------------------------------------- oracle + outcome --
@pytest.mark.parametrize("meaning, expected", [("step_correct", [1.0, 0.0, 1.0]), ("prefix_correct", [1.0, 0.0, 0.0])])
def test_oracle_meaning_picks_the_label(tok, meaning, expected):
    w = make_worker([{"name": "oracle"}, {"name": "outcome"}], meaning=meaning)
    t = w.score(make_traj(tok, WRONG))
    assert t.sample_valid and "reward_error" not in t.info
    assert t.step_rewards == expected
    assert t.outcome_reward == 0.0  # A4 != gold 5
    # the labels of both meanings are kept in info whatever reward.meaning is (metrics read them)
    assert t.info["step_correct"] == [True, False, True]
    assert t.info["prefix_correct"] == [True, False, False]
    assert t.info["outcome_correct"] is False and t.info["format_ok"] is True


def test_gold_response_scores_one_everywhere(tok):
    t = make_worker([{"name": "oracle"}, {"name": "outcome"}]).score(make_traj(tok, GOLD))
    assert t.sample_valid and t.step_rewards == [1.0, 1.0, 1.0] and t.outcome_reward == 1.0
    assert t.info["outcome_correct"] is True


# ----------------------------------------------------------------------------- weights and transforms --
# oracle (weight 3) gives step_correct [1, 0, 1]; the fake (weight 1) gives [0.2, 0.6, 1.0].
# Weighted mean = (3 * [1, 0, 1] + [0.2, 0.6, 1.0]) / 4 = [3.2, 0.6, 4.0] / 4 = [0.8, 0.15, 1.0]; then:
@pytest.mark.parametrize(
    "transform, params, expected",
    [
        ("identity", {}, [0.8, 0.15, 1.0]),
        ("linear", {}, [0.6, -0.7, 1.0]),  # 2p - 1
        ("clip", {}, [0.0, -0.35, 0.0]),  # min(p - 0.5, 0), default eta 0.5
        ("clip", {"eta": 0.9}, [-0.1, -0.75, 0.0]),  # min(p - 0.9, 0): transform_params override the default
        ("delta", {}, [0.65, -0.85, 1.0]),  # p_k - p_{k+1}, last keeps p_K (keep_last default True)
        ("delta", {"keep_last": False}, [0.65, -0.85, 0.0]),
    ],
)
def test_step_sources_weighted_mean_then_transform(tok, transform, params, expected):
    w = make_worker(
        [{"name": "oracle", "weight": 3}, {"name": "outcome"}], transform=transform, transform_params=params
    )
    w.step_sources.append(("fake_prm", 1.0, fixed([0.2, 0.6, 1.0])))
    t = w.score(make_traj(tok, WRONG))
    assert t.sample_valid, t.info.get("reward_error")
    assert t.step_rewards == pytest.approx(expected, abs=1e-6)
    assert t.outcome_reward == 0.0  # the transform is for step rewards only


def test_outcome_sources_are_a_weighted_sum(tok):
    """Outcome sources are summed with their weights, not averaged (unlike step sources)."""
    w = make_worker([{"name": "outcome", "weight": 2.0}])
    w.outcome_sources.append(("fake_outcome", 0.5, lambda traj, texts: 0.4))
    t = w.score(make_traj(tok, GOLD))
    assert t.outcome_reward == pytest.approx(2.0 * 1.0 + 0.5 * 0.4)  # = 2.2
    assert t.step_rewards == [0.0, 0.0, 0.0]  # no step source: zeros, still a valid sample
    assert t.sample_valid


# ------------------------------------------------------------------------------------------ masking --
def _boom(traj, step_texts):
    raise RuntimeError("prm exploded")


@pytest.mark.parametrize(
    "source, error",
    [
        (_boom, "RuntimeError: prm exploded"),
        (fixed([0.5, math.nan, 0.5]), "ValueError: reward source 'fake_prm' step 1: score nan is not a probability"),
        (fixed([0.5, 0.5, math.inf]), "reward source 'fake_prm' step 2: score inf"),
        (fixed([1.5, 0.5, 0.5]), "reward source 'fake_prm' step 0: score 1.5 is not a probability in [0, 1]"),
        (fixed([0.5, -0.1, 0.5]), "reward source 'fake_prm' step 1: score -0.1"),
        (fixed([0.5, "0.5", 0.5]), "reward source 'fake_prm' step 1: score '0.5'"),  # a string is not a number
        (fixed([0.5, 0.5]), "reward source 'fake_prm' gave 2 scores for 3 steps"),
    ],
)
def test_broken_step_source_masks_the_sample(tok, source, error):
    w = make_worker([{"name": "oracle"}, {"name": "outcome"}])
    w.step_sources.append(("fake_prm", 1.0, source))
    t = w.score(make_traj(tok, GOLD))  # a gold response: unmasked it would score 1.0 everywhere
    assert_masked(t, error)
    assert "reward_s" in t.info and "scored_at" in t.info


@pytest.mark.parametrize(
    "value, error",
    [
        (math.inf, "reward source 'bad_outcome': outcome inf is not a finite number"),
        (math.nan, "outcome nan is not a finite number"),
        ("1.0", "outcome '1.0' is not a finite number"),
        (None, "outcome None is not a finite number"),
    ],
)
def test_non_finite_outcome_masks_the_sample(tok, value, error):
    w = make_worker([{"name": "oracle"}, {"name": "outcome"}])
    w.outcome_sources.append(("bad_outcome", 1.0, lambda traj, texts: value))
    assert_masked(w.score(make_traj(tok, GOLD)), error)


@pytest.mark.parametrize(
    "transform, params, error",
    [
        ("clip", {"temperature": 1.0}, "reward transform 'clip' has no parameters ['temperature']; it takes ['eta']"),
        ("linear", {"eta": 0.5}, "reward transform 'linear' has no parameters ['eta']; it takes none"),
        ("no_such", {}, "unknown reward transform 'no_such'"),
    ],
)
def test_bad_transform_fails_when_the_worker_is_built(transform, params, error):
    """A wrong transform name or parameter is a set-up error: raised at once, not a mask on every sample."""
    with pytest.raises(ValueError, match=re.escape(error)):
        make_worker([{"name": "oracle"}, {"name": "outcome"}], transform=transform, transform_params=params)


def test_non_finite_transform_output_masks_at_score_time(tok):
    # log(p) + inf is inf for every p: the transform runs, its output is refused per sample
    w = make_worker(
        [{"name": "oracle"}, {"name": "outcome"}], transform="log_prob", transform_params={"log_z": math.inf}
    )
    assert_masked(w.score(make_traj(tok, GOLD)), "ValueError: reward transform 'log_prob' gave non-finite step rewards")


@pytest.mark.parametrize(
    "sources, error",
    [
        ([{"name": "oracle", "weight": -1.0}], "reward source 'oracle': weight -1.0 must be >= 0"),
        ([{"name": "oracle", "weight": 0.0}, {"name": "outcome"}], "the step sources' weights sum to 0"),
    ],
)
def test_bad_weights_fail_when_the_worker_is_built(sources, error):
    """A negative weight would push the weighted mean out of [0, 1]; weights summing to 0 leave it undefined."""
    with pytest.raises(ValueError, match=re.escape(error)):
        make_worker(sources)


# -------------------------------------------------------------------------------------- jsonl tasks --
JSONL_PROMPT = "What is 8*9?\n"
JSONL_LINES = ["8*9 = 72\n", "The answer is $\\boxed{72}$\n"]


@pytest.mark.parametrize("gold, outcome", [("72", 1.0), ("71", 0.0), ("72.0", 1.0)])
def test_jsonl_outcome_uses_check_answer_against_the_gold_answer(tok, gold, outcome):
    w = make_worker([{"name": "outcome"}], task_kind="jsonl")
    t = w.score(make_traj(tok, JSONL_LINES, prompt=JSONL_PROMPT, answer=gold))
    assert t.sample_valid, t.info.get("reward_error")
    assert t.outcome_reward == outcome
    assert t.step_rewards == [0.0, 0.0]
    assert "step_correct" not in t.info and "outcome_correct" not in t.info  # no oracle for jsonl


def test_jsonl_outcome_calls_check_answer_with_response_text_and_answer(tok, monkeypatch):
    import tasks.datasets

    calls = []
    monkeypatch.setattr(tasks.datasets, "check_answer", lambda pred, gold: calls.append((pred, gold)) or True)
    w = make_worker([{"name": "outcome"}], task_kind="jsonl")  # the source binds check_answer when built
    t = w.score(make_traj(tok, JSONL_LINES, prompt=JSONL_PROMPT, answer="72"))
    assert calls == [("".join(JSONL_LINES), "72")] and t.outcome_reward == 1.0


def test_oracle_source_needs_an_arithmetic_task():
    with pytest.raises(ValueError, match=r"reward source 'oracle' needs task.kind in \('arithmetic',\), got 'jsonl'"):
        make_worker([{"name": "oracle"}, {"name": "outcome"}], task_kind="jsonl")
