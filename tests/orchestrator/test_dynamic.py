"""orchestrator.dynamic.fill_batch with fake scoring (no Ray): which groups make the batch, in what order,
with what beside them, and the dynamic/* metrics, all worked out by hand; then orchestrator.train.step_rollout's
wiring, with a fake score_rollout and task.

A prompt's text says its samples' outcomes: "10" is a group whose sample 0 is right and sample 1 wrong
(informative), "11" and "00" are groups that all agree (no signal). A letter suffix keeps names apart.
"""

import os
from types import SimpleNamespace

import pytest

import orchestrator.train
from algo.seeding import derive_seed
from algo.trajectory import PromptRequest, Trajectory
from orchestrator.dynamic import ROUND_STRIDE, fill_batch
from orchestrator.rollout import Rollout
from orchestrator.validate import load_config

DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "demo_cpu.yaml"
)


def make_traj(req: PromptRequest, s: int) -> Trajectory:
    return Trajectory(
        uid=f"{req.prompt_id}-{s}",
        prompt_id=req.prompt_id,
        group_id=req.group_id,
        policy_version=0,
        prompt_ids=[1],
        response_ids=[2, 3],
        behavior_logprobs=[-1.0, -1.0],
        finish_reason="stop",
        step_spans=[(0, 2)],
        outcome_reward=float(req.text[s]),
        step_rewards=[0.0],
        info={"sample": s},
    )


def value_of(t: Trajectory) -> list[float]:  # says which trajectory it belongs to
    return [float(t.group_id), float(t.info["sample"])]


class FakeScore:
    """score(requests): two samples per request, in (group_id, sample) order as stream_rollouts returns them,
    with critic values and reference log-probs that name their trajectory. Records every call."""

    def __init__(self, values: bool = True, ref: bool = True):
        self.calls: list[list[PromptRequest]] = []
        self.values, self.ref = values, ref

    def __call__(self, requests: list[PromptRequest]) -> Rollout:
        self.calls.append(requests)
        trajs = [make_traj(r, s) for r in sorted(requests, key=lambda r: r.group_id) for s in (0, 1)]
        return Rollout(
            trajs,
            [value_of(t) for t in trajs] if self.values else None,
            [[-v for v in value_of(t)] for t in trajs] if self.ref else None,
            {"timing/generate_s": 1.0, "stream/scored_during_generation": 1.0 / len(self.calls)},
        )


def requests(names: list[str]) -> list[PromptRequest]:
    return [PromptRequest(prompt_id=name, group_id=g, text=name) for g, name in enumerate(names)]


def extra(pools: dict[int, list[str]]):
    """extra_requests(r, n) handing out round r's prompts; the group ids are fill_batch's to set (here: 0..)."""

    def fn(r: int, n: int) -> list[PromptRequest]:
        assert n == len(pools[r]), (r, n)  # asks for exactly as many prompts as groups are missing
        return requests(pools[r])

    return fn


def groups_of(rollout: Rollout) -> list[tuple[int, int]]:
    return [(t.group_id, t.info["sample"]) for t in rollout.trajectories]


def test_all_informative_first_round_is_the_plain_batch():
    score = FakeScore()
    out = fill_batch(score, requests(["10", "01"]), extra({}), want_groups=2, max_rounds=3, use_steps=False)
    assert len(score.calls) == 1  # no extra round: extra({}) would fail if asked
    assert groups_of(out) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert out.values == [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    assert out.timing["dynamic/rounds"] == 0 and out.timing["dynamic/dropped_groups"] == 0
    assert out.timing["dynamic/filled_groups"] == 0 and out.timing["dynamic/samples_generated"] == 4


def test_dropped_groups_are_replaced_by_later_rounds():
    # round 0: "10a" informative; "11" and "00" dropped -> 2 groups missing
    # round 1: asked for 2: "01" informative, "11b" dropped -> 1 missing
    # round 2: asked for 1: "10b" informative -> 3 kept, done (max_rounds 3 is not reached)
    score = FakeScore()
    pools = {1: ["01", "11b"], 2: ["10b"]}
    out = fill_batch(score, requests(["10a", "11", "00"]), extra(pools), want_groups=3, max_rounds=3, use_steps=False)
    # each extra round's prompt i becomes group r * ROUND_STRIDE + i: unique across the step
    assert [[r.group_id for r in call] for call in score.calls] == [
        [0, 1, 2],
        [ROUND_STRIDE, ROUND_STRIDE + 1],
        [2 * ROUND_STRIDE],
    ]
    assert [t.prompt_id for t in out.trajectories] == ["10a", "10a", "01", "01", "10b", "10b"]
    assert groups_of(out) == [(g, s) for g in (0, ROUND_STRIDE, 2 * ROUND_STRIDE) for s in (0, 1)]
    # rounds: 2 extra; dropped: "11", "00", "11b" = 3; filled: none; generated: (3 + 2 + 1) groups x 2 = 12
    assert out.timing["dynamic/rounds"] == 2
    assert out.timing["dynamic/dropped_groups"] == 3
    assert out.timing["dynamic/filled_groups"] == 0
    assert out.timing["dynamic/samples_generated"] == 12


def test_cap_reached_fills_with_the_earliest_dropped_groups():
    # round 0: "00a" dropped, "10" informative, "11a" dropped -> 2 missing
    # round 1 (the cap): "11b", "00b" both dropped -> still 2 missing, no more rounds
    # fill with the earliest dropped: "00a" (group 0) and "11a" (group 2), not round 1's
    score = FakeScore()
    out = fill_batch(
        score, requests(["00a", "10", "11a"]), extra({1: ["11b", "00b"]}), want_groups=3, max_rounds=1, use_steps=False
    )
    assert len(score.calls) == 2
    # (group_id, sample) order, not selection order (the kept group 1 was chosen before the fillers 0 and 2)
    assert groups_of(out) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [t.prompt_id for t in out.trajectories[::2]] == ["00a", "10", "11a"]
    # dropped: 2 in round 0 + 2 in round 1 = 4; filled: 2; generated: 5 groups x 2 = 10
    assert out.timing["dynamic/rounds"] == 1
    assert out.timing["dynamic/dropped_groups"] == 4
    assert out.timing["dynamic/filled_groups"] == 2
    assert out.timing["dynamic/samples_generated"] == 10


def test_no_extra_rounds_allowed_keeps_the_first_batch():
    # max_rounds 0: nothing is redrawn; the dropped group fills its own place back
    score = FakeScore()
    out = fill_batch(score, requests(["11", "10"]), extra({}), want_groups=2, max_rounds=0, use_steps=False)
    assert len(score.calls) == 1 and groups_of(out) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (out.timing["dynamic/dropped_groups"], out.timing["dynamic/filled_groups"]) == (1, 1)


def test_values_and_ref_logprobs_stay_beside_their_trajectories():
    # round 0 keeps group 1 ("01"), drops 0 and 2; round 1 (2 missing) keeps ROUND_STRIDE + 1 ("10"), drops
    # ROUND_STRIDE; the cap is reached one short, so group 0, the earliest dropped, fills: rows picked from
    # both rounds with dropped rows in between, which is where a misaligned column would show
    score = FakeScore()
    out = fill_batch(
        score, requests(["00", "01", "11"]), extra({1: ["11b", "10"]}), want_groups=3, max_rounds=1, use_steps=False
    )
    assert groups_of(out) == [(0, 0), (0, 1), (1, 0), (1, 1), (ROUND_STRIDE + 1, 0), (ROUND_STRIDE + 1, 1)]
    assert out.values is not None and out.ref_logprobs is not None
    assert len(out.values) == len(out.ref_logprobs) == len(out.trajectories) == 6
    for t, v, ref in zip(out.trajectories, out.values, out.ref_logprobs, strict=True):
        assert v == value_of(t) and ref == [-x for x in value_of(t)]


def test_no_critic_or_reference_gives_none():
    score = FakeScore(values=False, ref=False)
    out = fill_batch(score, requests(["00", "01"]), extra({1: ["10"]}), want_groups=2, max_rounds=1, use_steps=False)
    assert out.values is None and out.ref_logprobs is None and len(out.trajectories) == 4


def test_more_informative_groups_than_wanted_keeps_the_first_drawn():
    score = FakeScore()
    out = fill_batch(score, requests(["10", "01", "10b"]), extra({}), want_groups=2, max_rounds=3, use_steps=False)
    assert [t.prompt_id for t in out.trajectories[::2]] == ["10", "01"]
    assert out.timing["dynamic/samples_generated"] == 6  # the third group was generated all the same


def test_timing_seconds_add_up_and_other_entries_are_the_last_rounds():
    score = FakeScore()
    out = fill_batch(score, requests(["11", "10"]), extra({1: ["01"]}), want_groups=2, max_rounds=1, use_steps=False)
    assert out.timing["timing/generate_s"] == 2.0  # 1 s per round, two rounds
    assert out.timing["stream/scored_during_generation"] == 0.5  # the fake's second call reports 1 / 2


def test_masked_samples_and_step_rewards():
    def score(reqs: list[PromptRequest]) -> Rollout:
        trajs = [make_traj(r, s) for r in reqs for s in (0, 1)]
        trajs[1].sample_valid = False  # group 0 ("10"): one valid sample left -> nothing to compare -> dropped
        trajs[3].step_rewards = [1.0]  # group 1 ("11"): same outcome, steps 0.0 vs 1.0 -> informative with steps
        return Rollout(trajs, None, None)

    first = requests(["10", "11"])
    out = fill_batch(score, first, extra({}), want_groups=1, max_rounds=0, use_steps=True)
    assert [t.prompt_id for t in out.trajectories] == ["11", "11"]
    out = fill_batch(score, first, extra({}), want_groups=1, max_rounds=0, use_steps=False)
    assert [t.prompt_id for t in out.trajectories] == ["10", "10"]  # both dropped: the earliest fills
    assert (out.timing["dynamic/dropped_groups"], out.timing["dynamic/filled_groups"]) == (2, 1)


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="extra_requests"):
        fill_batch(FakeScore(), requests(["11"]), lambda r, n: [], want_groups=1, max_rounds=1, use_steps=False)
    too_big = [PromptRequest(prompt_id="10", group_id=ROUND_STRIDE, text="10")]
    with pytest.raises(ValueError, match="group ids"):
        fill_batch(FakeScore(), too_big, extra({}), want_groups=1, max_rounds=1, use_steps=False)


class FakeTask:
    """task.sample records each draw; a problem's id names the seed it was drawn with."""

    def __init__(self):
        self.draws: list[tuple[int, str, int]] = []

    def sample(self, n, split, seed):
        self.draws.append((n, split, seed))
        return [SimpleNamespace(prompt_id=f"{seed}-{i}", answer=i) for i in range(n)]

    def prompt_text(self, p):
        return p.prompt_id

    def question_text(self, p):
        return p.prompt_id


@pytest.mark.parametrize("dynamic", [False, True])
def test_train_step_rollout_draws_extra_prompts_from_derived_seeds(monkeypatch, dynamic):
    # group 0 agrees ("11"), any other group does not ("10"): with dynamic sampling, step 3's first round
    # keeps group 1, and one extra round, drawn with the seed derived from (seed, "dynamic", 3, 1), adds one
    calls: list[list[PromptRequest]] = []

    def score_rollout(roles, s, reqs):
        calls.append(reqs)
        named = [PromptRequest(r.prompt_id, r.group_id, "11" if r.group_id == 0 else "10") for r in reqs]
        return Rollout([make_traj(r, k) for r in named for k in (0, 1)], None, None)

    monkeypatch.setattr(orchestrator.train, "score_rollout", score_rollout)
    over = ["rollout.prompts_per_step=2", "rollout.group_size=2", "learner.micro_batch_size=2"]
    cfg = load_config(DEMO, [*over, "algo.estimator=grpo_outcome", f"rollout.dynamic_sampling={dynamic}"])
    task = FakeTask()
    out = orchestrator.train.step_rollout(cfg, SimpleNamespace(pad_id=0), task, 3)
    first = (2, "train", cfg.seed * 1_000_003 + 2)  # data position 2 (orchestrator.data.step_problems)
    if not dynamic:
        assert task.draws == [first] and len(calls) == 1 and "dynamic/rounds" not in out.timing
        return
    extra_seed = derive_seed(cfg.seed, "dynamic", 3, 1)
    assert task.draws == [first, (1, "train", extra_seed)]
    assert [t.group_id for t in out.trajectories] == [1, 1, ROUND_STRIDE, ROUND_STRIDE]
    assert [t.prompt_id for t in out.trajectories[::2]] == [f"{first[2]}-1", f"{extra_seed}-0"]
    assert out.timing["dynamic/samples_generated"] == 6  # 2 groups, then 1, of 2 samples each
