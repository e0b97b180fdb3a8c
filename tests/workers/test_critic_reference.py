"""Critic (DeepSpeed world of one, in this process) and reference worker on a tiny random Qwen2."""

from __future__ import annotations

import os

import pytest
import torch

from engine.build import TrainSettings

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def train_settings(lr: float = 1e-3) -> TrainSettings:
    return TrainSettings(
        lr=lr,
        weight_decay=0.0,
        warmup_steps=0,
        total_steps=100,
        schedule="constant",
        grad_clip=1.0,
        zero_stage=2,
        micro_batch_size=4,
        epochs=1,
        mini_batches=1,
        bf16=False,
    )


# CriticWorker arguments besides the model directories
CRITIC = dict(train=train_settings(), value_clip=0.2, loss_agg="token", seed=0)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> str:
    from tasks.models import make_tiny_policy
    from tasks.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["1+5-8+4=", "1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2"], vocab_size=258)
    path = tmp_path_factory.mktemp("tiny_policy")
    make_tiny_policy(path, tok, hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, seed=0)
    return str(path)


def batch(B: int = 6, L: int = 20, prompt: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    resp = torch.zeros(B, L)
    resp[:, prompt:] = 1.0
    resp[0, L - 3 :] = 0.0  # row 0: a shorter response, right-padded
    att = torch.ones(B, L, dtype=torch.long)
    att[0, L - 3 :] = 0
    step = torch.where(resp > 0, (torch.arange(L) - prompt).clamp_min(0) // 5, torch.tensor(-1)).long()
    return {
        "input_ids": torch.randint(2, 258, (B, L), generator=g),
        "attention_mask": att,
        "response_mask": resp,
        "step_index": step,
        "sample_valid": torch.ones(B),
        "returns": resp * torch.linspace(-1.0, 1.0, L),
    }  # fixed targets that vary along the response


@pytest.fixture(scope="module")
def critic(policy_dir):
    from workers.critic import CriticWorker

    return CriticWorker(model_dir=policy_dir, train=train_settings(lr=3e-3), value_clip=None, loss_agg="token", seed=0)


def test_critic_values_shape_and_position_convention(critic):
    b = batch()
    v = critic.values(b)
    assert v.shape == b["input_ids"].shape and v.dtype == torch.float32
    assert (v == 0).all()  # a head built from the policy starts at zero, not noise
    # values[:, t] is V(prefix < t): changing token t moves values at t+1.. only.
    t = 10
    b2 = {k: x.clone() for k, x in b.items()}
    b2["input_ids"][:, t] = (b2["input_ids"][:, t] + 1) % 258
    critic.engine.module.score.weight.data.normal_(0, 0.1)  # a non-zero head (fresh heads give 0)
    v1, v2 = critic.values(b), critic.values(b2)
    torch.testing.assert_close(v1[:, : t + 1], v2[:, : t + 1])
    assert (v1[:, t + 1 :] - v2[:, t + 1 :]).abs().max() > 0


def test_critic_value_loss_decreases_toward_fixed_returns(critic, tmp_path):
    b = batch(seed=1)
    losses = [critic.train_step(b)["value_loss"] for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    # checkpoint round trip: weights and client state come back
    critic.save_checkpoint(str(tmp_path), {"step": 8})
    before = critic.values(b)
    critic.train_step(b)
    assert not torch.equal(critic.values(b), before)
    assert critic.load_checkpoint(str(tmp_path)) == {"step": 8}
    torch.testing.assert_close(critic.values(b), before, rtol=0, atol=0)


def test_critic_from_a_critic_dir(policy_dir, tmp_path):
    from algo.trajectory import Trajectory
    from tasks.models import make_tiny_critic
    from workers.critic import CriticWorker

    made = make_tiny_critic(tmp_path / "critic", policy_dir)
    with torch.no_grad():
        made.score.bias.fill_(0.25)  # a recognisable (trained-looking) head that must not be reset
    made.save_pretrained(tmp_path / "critic")
    b = batch()
    for kw in (
        {"model_dir": policy_dir, "critic_dir": str(tmp_path / "critic")},
        {"model_dir": str(tmp_path / "critic")},
    ):  # the orchestrator passes a critic as model_dir
        v = CriticWorker(**kw, **CRITIC).values(b)
        # V at t is the head at t-1: 0.25 wherever a previous real token exists, 0 at t=0 and on padding.
        assert (v[:, 0] == 0).all() and (v[0, -3:] == 0).all()
        torch.testing.assert_close(v[1:, 1:], torch.full_like(v[1:, 1:], 0.25))
    with pytest.raises(ValueError, match="token-classification"):
        CriticWorker(model_dir=policy_dir, critic_dir=policy_dir, **CRITIC)
    # per-trajectory streaming: the response positions of the one-row batch
    c = CriticWorker(model_dir=str(tmp_path / "critic"), **CRITIC)
    c.engine.module.score.weight.data.normal_(0, 0.1)
    traj = Trajectory(
        uid="u",
        prompt_id="p",
        group_id=0,
        policy_version=0,
        prompt_ids=[5, 6, 7],
        response_ids=[8, 9],
        behavior_logprobs=[-1.0, -1.0],
        finish_reason="stop",
        step_spans=[(0, 2)],
    )
    full = c.values({"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "attention_mask": torch.ones(1, 5).long()})
    assert c.traj_values(traj) == pytest.approx(full[0, 3:].tolist())


def test_critic_batch_without_returns_is_a_clear_error(critic):
    b = batch()
    del b["returns"]
    with pytest.raises(KeyError, match="returns"):
        critic.train_step(b)


def test_reference_logprobs_equal_hf_recomputation(policy_dir):
    from transformers import AutoModelForCausalLM

    from workers.reference import ReferenceWorker

    ref = ReferenceWorker(model_dir=policy_dir, micro_batch_size=4)
    b = batch(seed=2)
    lp = ref.logprobs(b)
    # By hand from HF: log_softmax(logits[t-1])[input_ids[t]], 0 at t = 0 (right padding: default positions).
    hf = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    manual = torch.log_softmax(logits[:, :-1], -1).gather(-1, b["input_ids"][:, 1:, None])[..., 0]
    assert lp.shape == b["input_ids"].shape and (lp[:, 0] == 0).all()
    real = b["attention_mask"][:, 1:] > 0
    torch.testing.assert_close(lp[:, 1:][real], manual[real], rtol=1e-5, atol=1e-5)
    # Left padding gives the same log-probs for the real tokens (positions count from the first one).
    ids, att = b["input_ids"][1:2], b["attention_mask"][1:2]
    left = {
        "input_ids": torch.cat([torch.ones(1, 4, dtype=torch.long), ids], 1),
        "attention_mask": torch.cat([torch.zeros(1, 4, dtype=torch.long), att], 1),
    }
    torch.testing.assert_close(ref.logprobs(left)[:, 5:], lp[1:2, 1:], rtol=1e-4, atol=1e-5)
    # per-trajectory streaming: one log-prob per response token
    from algo.trajectory import Trajectory

    ids = b["input_ids"][1].tolist()
    traj = Trajectory(
        uid="u",
        prompt_id="p",
        group_id=0,
        policy_version=0,
        prompt_ids=ids[:5],
        response_ids=ids[5:],
        behavior_logprobs=[0.0] * (len(ids) - 5),
        finish_reason="stop",
        step_spans=[(0, len(ids) - 5)],
    )
    assert ref.traj_logprobs(traj) == pytest.approx(lp[1, 5:].tolist(), abs=1e-5)
