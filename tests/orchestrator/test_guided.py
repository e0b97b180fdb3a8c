"""Guided samples (algo.guided, orchestrator/guided.py) without Ray: which groups get a gold sample and where it
goes, the columns beside it, the scoring path, the wiring into step_rollout (with dynamic sampling too) and
train_step's metrics, and the config rules. Fakes follow tests/orchestrator/test_step.py and test_dynamic.py:
a fake actor's `.remote(x)` returns the value itself and ray_get returns what it is given.
"""

import copy
import dataclasses
import os
from types import SimpleNamespace

import pytest

import orchestrator.rollout
import orchestrator.train
from algo import registry
from algo.trajectory import PromptRequest, Trajectory
from orchestrator.data import task_from_config
from orchestrator.dynamic import ROUND_STRIDE
from orchestrator.guided import GoldWriter, guide_rollout, score_written
from orchestrator.metrics import rollout_stats, sample_records
from orchestrator.rollout import Rollout
from orchestrator.step import train_step
from orchestrator.validate import ConfigError, load_config
from tasks.arithmetic import problem_from_prompt, solution_steps, solution_text
from tests.orchestrator.test_step import SETTINGS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.yaml")
POLICY = os.path.join(ROOT, "tasks", "assets", "base_policy")
GUIDED = ["algo.estimator=grpo_outcome", "algo.guided.enable=true"]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    monkeypatch.setattr(orchestrator.rollout, "ray_get", lambda refs, role, what, timeout_s: refs)


def make_traj(g: int, s: int, outcome: float | None, valid: bool = True, prompt: str = "p") -> Trajectory:
    return Trajectory(
        uid=f"g{g}-s{s}",
        prompt_id=f"{prompt}{g}",
        group_id=g,
        policy_version=3,
        prompt_ids=[1, 2],
        response_ids=[10 + s] * 2,
        behavior_logprobs=[-1.0, -1.0],
        finish_reason="stop",
        step_spans=[(0, 2)],
        step_rewards=[0.0],
        outcome_reward=outcome,
        sample_valid=valid,
        info={"sample": s, "replica": 0},
    )


def tag(t: Trajectory) -> list[float]:  # a column entry (one per response token) naming its trajectory
    return [10.0 * t.group_id + t.info["sample"], 1.0 if t.info.get("guided") else 0.0]


def gold_of(t: Trajectory, solution: str) -> Trajectory:
    """A stand-in GoldWriter.trajectory: the replaced sample's place, the solution as its text."""
    gold = copy.deepcopy(t)
    gold.uid, gold.response_text, gold.outcome_reward, gold.step_rewards = f"gold-{t.uid}", solution, None, None
    gold.info = {"sample": t.info["sample"], "guided": True}
    return gold


def fake_score(trajs: list[Trajectory]) -> Rollout:
    """score_written's stand-in: the reward sources find every gold right; columns that name their trajectory."""
    out = []
    for t in sorted(trajs, key=lambda t: (t.group_id, t.info["sample"])):
        t = copy.deepcopy(t)
        t.outcome_reward, t.step_rewards = 1.0, [1.0]
        out.append(t)
    values = [tag(t) for t in out]
    return Rollout(out, values, [[-x for x in v] for v in values], {}, {"outcome": values})


def batch() -> Rollout:
    # group 0: all failed -> gold in place of sample 2; group 1: one success -> none; group 2: samples 0 and 1
    # failed, sample 2 masked -> gold in place of sample 2 (the masked one); group 3: all masked -> none
    outcomes = {0: [0.0, 0.0, 0.0], 1: [0.0, 1.0, 0.0], 2: [0.0, 0.0, None], 3: [None, None, None]}
    trajs = [make_traj(g, s, o, valid=o is not None) for g, os_ in outcomes.items() for s, o in enumerate(os_)]
    return Rollout(
        trajs,
        [tag(t) for t in trajs],
        [[-x for x in tag(t)] for t in trajs],
        {"timing/generate_s": 2.0},
        {"outcome": [tag(t) for t in trajs]},
    )


REQUESTS = [PromptRequest(f"p{g}", g, f"prompt {g}", solution=f"gold {g}") for g in range(4)]


def test_an_all_failed_group_gets_one_gold_sample_in_place_of_its_last():
    out = guide_rollout(batch(), REQUESTS, gold_of, fake_score)
    keys = [(t.group_id, t.info["sample"], bool(t.info.get("guided"))) for t in out.trajectories]
    gold = {(0, 2), (2, 2)}
    assert keys == [(g, s, (g, s) in gold) for g in range(4) for s in range(3)]  # same size, same order
    for t in out.trajectories:
        if t.info.get("guided"):
            assert t.response_text == f"gold {t.group_id}" and t.outcome_reward == 1.0  # scored, not set here
    # every column still sits beside its trajectory, the gold's from the gold's scoring
    assert out.values == [tag(t) for t in out.trajectories]
    assert out.ref_logprobs == [[-x for x in tag(t)] for t in out.trajectories]
    assert out.critic_values == {"outcome": [tag(t) for t in out.trajectories]}
    assert out.timing["guided/groups"] == 2 and out.timing["guided/outcome_mean"] == 1.0
    assert out.timing["timing/generate_s"] == 2.0 and "timing/guided_s" in out.timing


def test_no_failed_group_no_gold_and_no_scoring_call():
    calls = []
    rollout = Rollout([make_traj(0, 0, 1.0), make_traj(0, 1, 0.0)], None, None)
    out = guide_rollout(rollout, REQUESTS, gold_of, lambda trajs: calls.append(trajs) or fake_score(trajs))
    assert calls == [] and out.trajectories == rollout.trajectories and out.values is None
    assert out.timing == {"guided/groups": 0.0}


def test_columns_that_disagree_and_missing_requests_are_errors():
    no_values = Rollout([make_traj(0, 0, 0.0), make_traj(0, 1, 0.0)], None, None)
    with pytest.raises(ValueError, match="critic values"):  # the gold's scoring gave values, the batch has none
        guide_rollout(no_values, REQUESTS, gold_of, fake_score)
    with pytest.raises(ValueError, match="no request for groups"):
        guide_rollout(batch(), REQUESTS[1:], gold_of, fake_score)


def remote(fn):
    return SimpleNamespace(remote=fn)


def test_score_written_goes_through_the_roles_that_score_every_sample():
    scored = []

    def score_group(*trajs):  # a reward replica: the oracle finds the gold's one step right, the outcome right
        out = []
        for t in trajs:
            scored.append(t.uid)
            t = copy.deepcopy(t)
            t.step_rewards, t.outcome_reward = [1.0] * t.num_steps, 1.0
            out.append(t)
        return out

    roles = SimpleNamespace(
        rewards=[SimpleNamespace(score_group=remote(score_group))],
        critic=SimpleNamespace(traj_values=remote(lambda t: [0.5] * len(t.response_ids))),
        critics={},
        reference=SimpleNamespace(traj_logprobs=remote(lambda t: [-2.0] * len(t.response_ids))),
    )
    s = SimpleNamespace(reward_batch=1, timeout_s=5.0)
    golds = [gold_of(make_traj(g, 2, 0.0), f"gold {g}") for g in (4, 1)]
    out = score_written(roles, s, golds)
    assert scored == ["gold-g4-s2", "gold-g1-s2"]  # each one, as it comes
    assert [t.group_id for t in out.trajectories] == [1, 4]  # returned in (group_id, sample) order
    assert [t.outcome_reward for t in out.trajectories] == [1.0, 1.0]
    assert out.values == [[0.5, 0.5]] * 2 and out.ref_logprobs == [[-2.0, -2.0]] * 2


def test_gold_writer_cuts_the_gold_like_a_policy_sample():
    writer = GoldWriter(POLICY, "\n")
    problem = problem_from_prompt("1+5-8+4=")
    replaced = make_traj(7, 3, 0.0)
    gold = writer.trajectory(replaced, solution_text(problem))
    assert (gold.group_id, gold.info, gold.policy_version) == (7, {"sample": 3, "guided": True}, 3)
    assert gold.prompt_ids == replaced.prompt_ids and gold.response_ids[-1] == writer.eos_id
    assert gold.response_text == solution_text(problem) == "1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\n"
    # one step per line, EOS joining the last: exactly the gold's steps
    texts = [writer.tokenizer.decode(gold.response_ids[a:b], skip_special_tokens=True) for a, b in gold.step_spans]
    assert texts == [line + "\n" for line in solution_steps(problem)]
    assert gold.behavior_logprobs == [0.0] * len(gold.response_ids) and gold.step_rewards is None
    with pytest.raises(ValueError, match="no gold solution"):
        writer.trajectory(replaced, "")


@pytest.mark.parametrize("dynamic", [False, True])
def test_step_rollout_gives_gold_samples_with_their_prompts_solutions(monkeypatch, dynamic):
    # group 0 of every round all fails, the others succeed once; with dynamic sampling group 0 is dropped for
    # a fresh prompt (group ROUND_STRIDE), which all fails as well and fills the batch after the last round
    def score_rollout(roles, s, reqs):
        return Rollout(
            [make_traj(r.group_id, k, float(r.group_id % ROUND_STRIDE != 0 and k == 0)) for r in reqs for k in (0, 1)],
            None,
            None,
        )

    def score_written(roles, s, trajs):  # the same roles as score_rollout's: no critic, no reference
        return Rollout(fake_score(trajs).trajectories, None, None)

    monkeypatch.setattr(orchestrator.train, "score_rollout", score_rollout)
    monkeypatch.setattr(orchestrator.train, "score_written", score_written)
    over = ["rollout.prompts_per_step=2", "rollout.group_size=2", "learner.micro_batch_size=1", *GUIDED]
    cfg = load_config(DEMO, [*over, f"rollout.dynamic_sampling={dynamic}", "rollout.dynamic_max_rounds=1"])
    task = task_from_config(cfg)
    roles = SimpleNamespace(pad_id=0, gold_writer=GoldWriter(POLICY, "\n"))
    out = orchestrator.train.step_rollout(cfg, roles, task, 3)
    golds = [t for t in out.trajectories if t.info.get("guided")]
    assert len(out.trajectories) == 4 and out.timing["guided/groups"] == len(golds) == 1
    (gold,) = golds
    assert gold.info["sample"] == 1 and out.trajectories[1] is gold  # group 0's last sample
    if dynamic:  # round 1's fresh prompt failed too: the earliest dropped group, round 0's group 0, fills the batch
        assert out.timing["dynamic/filled_groups"] == 1
    wanted = orchestrator.train.step_requests(cfg, task, 3)[0]
    assert gold.group_id == 0 and gold.response_text == wanted.solution
    assert wanted.solution == solution_text(problem_from_prompt(wanted.text))


def test_train_step_counts_gold_samples_apart_from_the_policy():
    rollout = guide_rollout(batch(), REQUESTS, gold_of, fake_score)
    batches = []
    roles = SimpleNamespace(
        learner=SimpleNamespace(train_step=lambda b: batches.append(b) or {"loss": 0.1}),
        critic=None,
        critics={},
        generators=SimpleNamespace(restarts=0, reissued=0),
    )
    pipeline = SimpleNamespace(next=lambda step, version, prefetch: (rollout, {}))
    s = dataclasses.replace(SETTINGS, sampling={}, timeout_s=5.0, guided=True)
    metrics, trajs = train_step(roles, s, pipeline, 1, 3)
    (b,) = batches
    assert b["guided"].tolist() == [float(g in ((0, 2), (2, 2))) for g in [(g, k) for g in range(4) for k in range(3)]]
    assert metrics["guided/groups"] == 2 and metrics["samples_step"] == 12  # the gold replaced, never added
    # over the policy's own samples: valid ones group 0: 0, 0; group 1: 0, 1, 0; group 2: 0, 0 -> 1 / 7 (with the
    # golds' 1.0 it would be 3 / 9); masked: group 3's three (group 2's masked sample is the one the gold replaced)
    assert metrics["reward/outcome_mean"] == pytest.approx(1 / 7) and metrics["samples/masked"] == 3
    records = sample_records(1, trajs)
    assert [r["guided"] for r in records].count(True) == 2
    assert all(r["outcome_reward"] == 1.0 for r in records if r["guided"])
    assert rollout_stats(trajs)["reward/outcome_mean"] == pytest.approx(1 / 7)


def test_config_rules_name_the_field():
    cfg = load_config(DEMO, GUIDED)
    assert cfg.algo.guided.enable and cfg.algo.guided.max_weight == 2.0
    assert not load_config(DEMO).algo.guided.enable  # off by default
    settings = orchestrator.train.settings(cfg, SimpleNamespace(pad_id=0), 1)
    assert settings.guided and not orchestrator.train.settings(load_config(DEMO), SimpleNamespace(pad_id=0), 1).guided
    jsonl = ["task.kind=jsonl", "task.train_path=a.jsonl", "task.eval_path=b.jsonl"]
    for overrides, expected in [
        (["algo.guided.max_weight=0"], "algo.guided.max_weight: bad value 0.0; allowed: a number > 0"),
        (["algo.guided.max_weigth=2"], "algo.guided.max_weigth: unknown key in command line"),
        (["algo.estimator=gae"], "algo.guided.enable: a gold sample takes its advantage from its group"),
        ([*jsonl, "reward.sources=[{name: outcome}]"], "algo.guided.enable: task.kind=jsonl has no gold solutions"),
        (["reward.sources=[{name: oracle}]"], "reward.sources: algo.guided.enable finds the groups that all failed"),
        (["algo.off_policy=behavior"], "algo.off_policy=behavior reads behaviour log-probs"),
        (["algo.off_policy=decoupled"], "algo.off_policy=decoupled reads behaviour log-probs"),
        (["algo.kl_coef=0.05", "algo.kl_in=reward"], "algo.kl_in=reward takes the KL from behaviour log-probs"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(DEMO, [*GUIDED, *overrides], check_files=False)
        assert str(err.value).startswith(expected), overrides
    for name, spec in registry.ESTIMATORS.items():  # every estimator without groups, whatever its name
        if not spec.needs_groups:
            with pytest.raises(ConfigError, match=f"algo.guided.enable: .* algo.estimator={name}"):
                load_config(DEMO, ["algo.guided.enable=true", f"algo.estimator={name}"])
    assert load_config(DEMO, [*GUIDED, "algo.kl_coef=0.05"]).algo.kl_in == "loss"  # a KL in the loss is fine
