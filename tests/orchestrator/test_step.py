"""orchestrator.step.train_step with fake roles: its dataflow pinned in seconds, without Ray, vLLM or DeepSpeed.

The e2e tests run the real roles but only see the result of many steps; these tests pin each arrow of one
step by hand: finishing order -> batch order, outcomes -> grpo advantages, critic values and reference
log-probs -> their batch positions, KL in the reward vs the loss, weight publishing, SFT mask.

Fake actors answer `.method.remote(x)` with the value itself, and `ray_get` is replaced where it was
imported (orchestrator.rollout, orchestrator.step) by a function returning what it is given.
"""

import copy
import os
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import orchestrator.checkpoint
import orchestrator.rollout
import orchestrator.step
from algo.trajectory import PromptRequest, Trajectory
from orchestrator.checkpoint import load_checkpoint, save_checkpoint
from orchestrator.pipeline import Pipeline
from orchestrator.step import StepSettings, score_rollout, stage_weights, train_step

PROMPTS = {0: [5, 6], 1: [7, 8, 9]}  # group -> prompt ids (different lengths on purpose)
LENGTHS = {(0, 0): 3, (0, 1): 4, (1, 0): 2, (1, 1): 5}  # (group, sample) -> response length
FINISH_ORDER = [(1, 1), (0, 1), (1, 0), (0, 0)]  # the order the pool yields them: not (group, sample) order
OUTCOMES = {(0, 0): 1.0, (0, 1): 0.0, (1, 0): 0.0, (1, 1): 1.0}
SETTINGS = StepSettings(
    sampling={"n": 2, "temperature": 1.0, "top_p": 1.0, "max_tokens": 8, "seed": 0},
    estimator="grpo_outcome",
    estimator_params={"std_normalize": True},
    whiten=False,
    kl_coef=0.0,
    kl_estimator="k1",
    kl_in="loss",
    sft_coef=0.0,
    train_policy=True,
    pad_id=1,
    timeout_s=30.0,
    sync_method="object_store",
)
REQUESTS = [PromptRequest(prompt_id=f"p{g}", group_id=g, text=f"prompt {g}") for g in (0, 1)]


def make_traj(g: int, s: int) -> Trajectory:
    n = LENGTHS[(g, s)]
    return Trajectory(
        uid=f"g{g}-s{s}",
        prompt_id=f"p{g}",
        group_id=g,
        policy_version=7,  # the version the steps below train at: a fresh batch
        prompt_ids=PROMPTS[g],
        response_ids=[100 + 10 * g + s] * n,
        behavior_logprobs=[-1.0] * n,
        finish_reason="stop",
        step_spans=[(0, 1), (1, n)],
        info={"sample": s},
    )


def remote(fn):
    """`.remote(x)` of a fake actor method: runs fn now and returns its value in place of an ObjectRef."""
    return SimpleNamespace(remote=fn)


class FakePool:
    def __init__(self):
        self.restarts, self.reissued, self.loaded, self.streamed = 0, 1, [], []

    def stream(self, requests, sampling):
        self.streamed.append((requests, sampling))
        for g, s in FINISH_ORDER:
            t = make_traj(g, s)
            yield t, t  # (traj_ref, traj): the "ref" is the trajectory itself

    actors = ("g0", "g1")

    def load_weights(self, published):
        self.loaded.append(published)
        return {"sync/load_s": 0.01, "sync/mismatched_tensors": 0}

    def receive_weights(self, version, channel, send, export):
        self.loaded.append((version, channel, send(), export))
        return {"sync/load_s": 0.02, "sync/send_s": 0.01, "sync/mismatched_tensors": 0}


class FakeLearner:
    def __init__(self):
        self.batches = []

    def train_step(self, batch):
        self.batches.append(batch)
        return {"loss": 0.25}

    def export_weights(self):
        self.last_export = {"tensors": 1, "hashes": {"w": "h"}}
        return "weights-ref"

    def fingerprint(self):
        return {"sum": 42.0}

    def weight_channel(self, world_size):
        return {"world_size": world_size}

    def send_weights(self, channel):
        return ["send-ref", channel]


def score(outcomes):
    def fn(*trajs):  # RewardWorker.score_group: a batch of trajectories, each its own argument
        out = []
        for traj in trajs:
            t = copy.deepcopy(traj)  # Ray would hand the worker a copy
            t.outcome_reward, t.step_rewards = outcomes[(t.group_id, t.info["sample"])], [0.0] * t.num_steps
            out.append(t)
        return out

    return fn


def critic_values(traj):  # 10 * group + sample + 0.1 * token position: every value says where it belongs
    return [10.0 * traj.group_id + traj.info["sample"] + 0.1 * i for i in range(len(traj.response_ids))]


def make_roles(critic=False, reference=False, outcomes=OUTCOMES, online_prm=None):
    critic_batches = []
    return SimpleNamespace(
        generators=FakePool(),
        rewards=[SimpleNamespace(score_group=remote(score(outcomes)))],
        learner=FakeLearner(),
        critic=SimpleNamespace(
            traj_values=remote(critic_values),
            batches=critic_batches,
            train_step=remote(lambda b: critic_batches.append(b) or {"critic/loss": 0.5}),
        )
        if critic
        else None,
        # the reference finds every sampled token 0.5 nats less likely than the behaviour policy did
        reference=SimpleNamespace(traj_logprobs=remote(lambda t: [lp - 0.5 for lp in t.behavior_logprobs]))
        if reference
        else None,
        pad_id=1,
        online_prm=online_prm,
        critics={},  # algo.critics: reward -> its critic (the tests of one critic per reward set them)
    )


def run_step(roles, s: StepSettings, version: int = 7):
    """One synchronous step as the train loop runs it, then the generators catch up with the new weights (as
    before an evaluation): returns the step's metrics, the catch-up's merged in, and its trajectories."""
    pipeline = Pipeline(
        0,
        rollout_of=lambda step: score_rollout(roles, s, REQUESTS),
        stage=lambda v: stage_weights(roles, v, s.timeout_s, s.sync_method),
        generator_version=version,
    )
    metrics, trajs = train_step(roles, s, pipeline, 1, version)
    metrics.update(pipeline.catch_up(metrics["policy_version"]))
    return metrics, trajs


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    for module in (orchestrator.rollout, orchestrator.step):
        monkeypatch.setattr(module, "ray_get", lambda refs, role, what, timeout_s: refs)


def rows():
    """(group, sample) of batch rows in the order train_step must build them."""
    return sorted(LENGTHS)


def response_slice(b):
    g, s = rows()[b]
    p = len(PROMPTS[g])
    return slice(p, p + LENGTHS[(g, s)])


def test_batch_is_in_group_sample_order_whatever_the_finishing_order():
    roles = make_roles()
    metrics, trajs = run_step(roles, SETTINGS)
    assert roles.generators.streamed == [(REQUESTS, SETTINGS.sampling)]
    assert [(t.group_id, t.info["sample"]) for t in trajs] == rows() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    (batch,) = roles.learner.batches
    assert batch["group_ids"].tolist() == [0, 0, 1, 1]
    assert batch["outcome"].tolist() == [1.0, 0.0, 0.0, 1.0]
    for b, (g, s) in enumerate(rows()):  # prompt + response, right-padded with pad_id 1 to L = 3 + 5 = 8
        n, p = LENGTHS[(g, s)], len(PROMPTS[g])
        assert batch["input_ids"][b].tolist() == PROMPTS[g] + [100 + 10 * g + s] * n + [1] * (8 - p - n)
    assert metrics["samples_step"] == 4 and metrics["reward/outcome_mean"] == 0.5
    assert metrics["policy_version_sampled"] == 7 and metrics["async/staleness_max"] == 0.0
    assert metrics["generators/restarts"] == 0 and metrics["generators/reissued_samples"] == 1
    assert metrics["loss"] == 0.25 and metrics["kl/behavior_ref"] == 0.0


def test_reward_replicas_take_batches_in_turn():
    # 4 trajectories arrive in FINISH_ORDER; batches of 3 go to replica 0, then the last one (sent when
    # generation ends) to replica 1; the batch comes back in (group, sample) order all the same.
    calls = {0: [], 1: []}

    def replica(k):
        def fn(*trajs):
            calls[k].append([(t.group_id, t.info["sample"]) for t in trajs])
            return score(OUTCOMES)(*trajs)

        return SimpleNamespace(score_group=remote(fn))

    rollout = orchestrator.rollout.stream_rollouts(
        FakePool(), [replica(0), replica(1)], REQUESTS, SETTINGS.sampling, reward_batch=3, timeout_s=60
    )
    assert calls == {0: [FINISH_ORDER[:3]], 1: [FINISH_ORDER[3:]]}
    assert [(t.group_id, t.info["sample"]) for t in rollout.trajectories] == rows()
    assert [t.outcome_reward for t in rollout.trajectories] == [1.0, 0.0, 0.0, 1.0]


def test_online_prm_learns_each_scored_batch_in_batch_order():
    learned = []
    online = SimpleNamespace(learn=remote(lambda trajs: learned.append(trajs) or {"prm_online/loss": 0.7}))
    roles = make_roles(online_prm=online)
    metrics, trajs = run_step(roles, SETTINGS)
    (batch,) = learned  # once per batch, after scoring: outcomes are set, (group, sample) order, not finish order
    assert [(t.group_id, t.info["sample"]) for t in batch] == rows()
    assert [t.outcome_reward for t in batch] == [1.0, 0.0, 0.0, 1.0]
    assert metrics["prm_online/loss"] == 0.7 and "timing/prm_learn_s" in metrics


def test_grpo_outcome_advantages_by_hand():
    # Each group has outcomes {1, 0}: mean 0.5, unbiased std sqrt((0.5^2 + 0.5^2) / (2 - 1)) = 0.70711,
    # so the right sample gets 0.5 / (0.70711 + 1e-6) = +0.70711 on every response token, the wrong one -0.70711.
    roles = make_roles()
    run_step(roles, SETTINGS)
    (batch,) = roles.learner.batches
    adv, expected = batch["advantages"], [0.70711, -0.70711, -0.70711, 0.70711]  # rows (0,0) (0,1) (1,0) (1,1)
    for b, a in enumerate(expected):
        sl = response_slice(b)
        assert adv[b, sl].tolist() == pytest.approx([a] * LENGTHS[rows()[b]], abs=1e-5)
        assert float(adv[b].abs().sum() - adv[b, sl].abs().sum()) == 0.0  # 0 on prompt and padding
    assert float(batch["returns"].abs().sum()) == 0.0  # grpo has no returns: zeros


def test_critic_values_sit_at_the_response_positions():
    roles = make_roles(critic=True)
    metrics, _ = run_step(roles, SETTINGS)
    (batch,) = roles.learner.batches
    assert roles.critic.batches == [batch]  # the critic trains on the very batch the learner got
    assert metrics["critic/loss"] == 0.5
    old = batch["old_values"]
    for b, (g, s) in enumerate(rows()):
        sl = response_slice(b)
        assert old[b, sl].tolist() == pytest.approx([10 * g + s + 0.1 * i for i in range(LENGTHS[(g, s)])])
        assert float(old[b].abs().sum() - old[b, sl].abs().sum()) == pytest.approx(0.0, abs=1e-5)


def test_kl_in_reward_lowers_advantages_by_the_kl_return_to_go():
    # k1 per token = -(ref - behaviour) = -(-1.5 - -1.0) = 0.5. In the reward it is a token reward
    # -kl_coef * 0.5 = -0.05, and grpo adds its undiscounted return-to-go: token j of an n-token response
    # loses 0.05 * (n - j), e.g. n = 3: [-0.15, -0.10, -0.05]. In the loss it leaves the advantages alone.
    s = replace(SETTINGS, kl_coef=0.1)
    adv = {}
    for kl_in in ("loss", "reward"):
        roles = make_roles(reference=True)
        metrics, _ = run_step(roles, replace(s, kl_in=kl_in))
        assert metrics["kl/behavior_ref"] == pytest.approx(0.5)
        (batch,) = roles.learner.batches
        assert batch["ref_logprobs"][0, response_slice(0)].tolist() == [-1.5] * 3
        adv[kl_in] = batch["advantages"]
    no_ref = make_roles()
    run_step(no_ref, s)
    assert torch.equal(adv["loss"], no_ref.learner.batches[0]["advantages"])
    diff = adv["reward"] - adv["loss"]
    for b, key in enumerate(rows()):
        n = LENGTHS[key]
        assert diff[b, response_slice(b)].tolist() == pytest.approx([-0.05 * (n - j) for j in range(n)], abs=1e-5)
    assert float((diff > 0).sum()) == 0.0  # a KL penalty never raises an advantage


def test_trained_step_publishes_version_plus_one():
    roles = make_roles()
    metrics, _ = run_step(roles, SETTINGS)
    assert metrics["policy_version"] == 8
    (published,) = roles.generators.loaded
    assert (published.version, published.weights_ref, published.hashes) == (8, "weights-ref", {"w": "h"})
    assert metrics["sync/load_s"] == 0.01 and metrics["sync/mismatched_tensors"] == 0 and "sync/total_s" in metrics


def test_collective_sync_starts_the_sender_for_every_generator_plus_one():
    roles = make_roles()
    metrics, _ = run_step(roles, replace(SETTINGS, sync_method="collective"))
    ((version, channel, sent, export),) = roles.generators.loaded
    assert (version, channel, sent) == (8, {"world_size": 3}, ["send-ref", {"world_size": 3}])
    assert export == roles.learner.export_weights  # a replacement generator loads through the object store
    assert metrics["policy_version"] == 8 and metrics["sync/send_s"] == 0.01


def test_critic_warmup_neither_trains_nor_publishes_the_policy():
    roles = make_roles(critic=True)
    metrics, trajs = run_step(roles, replace(SETTINGS, train_policy=False))
    assert roles.learner.batches == [] and roles.generators.loaded == []
    assert metrics["policy_version"] == 7 and "loss" not in metrics
    assert len(roles.critic.batches) == 1 and metrics["critic/loss"] == 0.5  # the critic still trains
    assert len(trajs) == 4


def test_sft_mask_covers_the_responses_with_outcome_above_half():
    outcomes = {(0, 0): 1.0, (0, 1): 0.5, (1, 0): 0.0, (1, 1): 0.75}  # 0.5 is not above 0.5
    roles = make_roles(outcomes=outcomes)
    run_step(roles, replace(SETTINGS, sft_coef=0.1))
    (batch,) = roles.learner.batches
    keep = torch.tensor([1.0, 0.0, 0.0, 1.0])[:, None]
    assert torch.equal(batch["sft_mask"], batch["response_mask"] * keep)
    roles = make_roles(outcomes=outcomes)
    run_step(roles, SETTINGS)  # sft_coef 0: no SFT term
    assert "sft_mask" not in roles.learner.batches[0]


# ------------------------------------------------------------------ one critic per reward (algo.critics)

CRITICS_SETTINGS = replace(
    SETTINGS,
    estimator="gae",
    estimator_params={"gamma": 1.0, "lam": 1.0, "outcome_weight": 1.0},
    critic_weights={"process": 1.0, "outcome": 0.5},
)


def reward_critic(values_fn, loss: float):
    """A fake CriticWorker of one reward: values per trajectory; records the batches it trains on."""
    batches: list[dict] = []
    return SimpleNamespace(
        traj_values=remote(values_fn),
        batches=batches,
        train_step=remote(lambda b: batches.append(b) or {"value_loss": loss, "grad_norm": 1.0}),
    )


def test_one_critic_per_reward_values_returns_advantages_and_metrics():
    roles = make_roles()
    roles.critics = {
        "process": reward_critic(critic_values, 0.1),
        "outcome": reward_critic(lambda t: [0.25] * len(t.response_ids), 0.2),
    }
    metrics, _ = run_step(roles, CRITICS_SETTINGS)
    (batch,) = roles.learner.batches
    assert "old_values" not in batch and "returns" not in batch  # no critic of the combined reward
    for b, (g, s) in enumerate(rows()):
        sl, n, o = response_slice(b), LENGTHS[(g, s)], OUTCOMES[(g, s)]
        v_process = [10 * g + s + 0.1 * i for i in range(n)]
        assert batch["old_values/process"][b, sl].tolist() == pytest.approx(v_process)
        assert batch["old_values/outcome"][b, sl].tolist() == [0.25] * n
        # gamma = lam = 1: a critic's return is the return-to-go of its own reward: the step rewards (all 0
        # here) for the process critic, the outcome (on the last token) for the outcome critic
        assert batch["returns/process"][b, sl].tolist() == [0.0] * n
        assert batch["returns/outcome"][b, sl].tolist() == [o] * n
        # and A = return - value per critic: 1.0 * (0 - V_process) + 0.5 * (outcome - 0.25)
        expected = [-v + 0.5 * (o - 0.25) for v in v_process]
        assert batch["advantages"][b, sl].tolist() == pytest.approx(expected, abs=1e-5)
    for reward in ("process", "outcome"):  # each critic trains once, on its own values and returns
        (own,) = roles.critics[reward].batches
        assert torch.equal(own["old_values"], batch[f"old_values/{reward}"])
        assert torch.equal(own["returns"], batch[f"returns/{reward}"])
    # each critic's metrics under its reward: neither overwrites the other's nor the learner's
    assert metrics["critic/process/value_loss"] == 0.1 and metrics["critic/outcome/value_loss"] == 0.2
    assert metrics["critic/process/grad_norm"] == 1.0 and "value_loss" not in metrics and metrics["loss"] == 0.25


def test_critics_train_during_the_critic_warmup():
    roles = make_roles()
    roles.critics = {"outcome": reward_critic(lambda t: [0.0] * len(t.response_ids), 0.3)}
    metrics, _ = run_step(roles, replace(CRITICS_SETTINGS, critic_weights={"outcome": 1.0}, train_policy=False))
    assert roles.learner.batches == [] and len(roles.critics["outcome"].batches) == 1
    assert metrics["critic/outcome/value_loss"] == 0.3


def test_each_critic_is_checkpointed_in_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(orchestrator.checkpoint, "ray_get", lambda refs, role, what, timeout_s: refs)
    loaded: list[str] = []

    def critic(reward):
        def save(path):
            os.makedirs(path)
            with open(os.path.join(path, "weights"), "w") as fh:
                fh.write(reward)

        return SimpleNamespace(save_checkpoint=remote(save), load_checkpoint=remote(loaded.append))

    learner = SimpleNamespace(save_checkpoint=lambda path, state: os.makedirs(path), load_checkpoint=lambda path: None)
    roles = SimpleNamespace(
        learner=learner, critic=None, online_prm=None, critics={r: critic(r) for r in ("process", "outcome")}
    )
    path = save_checkpoint(str(tmp_path), roles, {"step": 2}, keep=1, timeout_s=5)
    assert {"critic-process", "critic-outcome"} <= set(os.listdir(path)) and "critic" not in os.listdir(path)
    for reward in ("process", "outcome"):
        with open(os.path.join(path, f"critic-{reward}", "weights")) as fh:
            assert fh.read() == reward
    assert load_checkpoint(path, roles, timeout_s=5) == {"step": 2}
    assert loaded == [os.path.join(path, "critic-process"), os.path.join(path, "critic-outcome")]
