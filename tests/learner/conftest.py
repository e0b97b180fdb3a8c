"""Fixtures of the learner tests: a tiny random Qwen2 policy dir, synthetic padded batches, local Ray."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from algo.batch import collate
from algo.trajectory import Trajectory
from engine.build import TrainSettings
from learner.objective import ObjectiveCoefs

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def make_policy_dir(path) -> str:
    """Qwen2, hidden 64, 2 layers, 2 heads (head size 32), byte-level BPE vocab of 258, random init."""
    from tasks.models import make_tiny_policy
    from tasks.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["1+5-8+4=", "1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2"], vocab_size=258)
    make_tiny_policy(path, tok, hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, seed=0)
    return str(path)


def make_batch(
    B: int, *, prompt_len: int = 8, max_response: int = 40, step_len: int = 8, vocab: int = 258, seed: int = 0
) -> dict:
    """A right-padded batch in algo.batch.collate's layout with random tokens and advantages.

    Row b has a response of max_response - (b % 3) * 4 tokens cut into steps of step_len tokens.
    """
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for b in range(B):
        n = max_response - (b % 3) * 4
        ids = torch.randint(2, vocab, (prompt_len + n,), generator=g).tolist()
        spans = [(s, min(s + step_len, n)) for s in range(0, n, step_len)]
        trajs.append(
            Trajectory(
                uid=str(b),
                prompt_id=str(b),
                group_id=b,
                policy_version=0,
                prompt_ids=ids[:prompt_len],
                response_ids=ids[prompt_len:],
                behavior_logprobs=(-5.5 + 0.1 * torch.randn(n, generator=g)).tolist(),
                finish_reason="stop",
                step_spans=spans,
            )
        )
    batch = collate(trajs, pad_id=1)  # 1 = pad id of the tiny tokenizer
    batch["advantages"] = torch.zeros_like(batch["behavior_logprobs"])
    for b, t in enumerate(trajs):
        n = len(t.response_ids)
        adv = torch.randn(len(t.step_spans), generator=g)[torch.arange(n) // step_len]  # one value per step
        batch["advantages"][b, prompt_len : prompt_len + n] = adv
    batch["returns"] = batch["advantages"].clone()
    return batch


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory) -> str:
    return make_policy_dir(tmp_path_factory.mktemp("tiny_policy"))


@pytest.fixture(scope="module")  # module scope: other test folders start their own Ray
def ray_local():
    import ray

    if not ray.is_initialized():
        # Test-defined actors (pickled by reference) must be importable in Ray workers.
        here = os.path.dirname(os.path.abspath(__file__))
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": here}},
        )
    yield ray
    ray.shutdown()


def coefs(**over) -> ObjectiveCoefs:
    """Plain PPO: clip 0.2 both ways, token aggregation, no KL / entropy / SFT term (k3 when KL is on)."""
    kw = dict(
        clip_low=0.2,
        clip_high=0.2,
        dual_clip=None,
        loss_agg="token",
        entropy_coef=0.0,
        kl_coef=0.0,
        kl_estimator="k3",
        sft_coef=0.0,
    )
    return ObjectiveCoefs(**{**kw, **over})


def train_settings(**over) -> TrainSettings:
    """TrainSettings for the tests: constant lr 1e-3, ZeRO-2, micro-batches of 4, one update per batch."""
    kw = dict(
        lr=1e-3,
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
    return TrainSettings(**{**kw, **over})


def rank_kwargs(policy_dir: str, **over) -> dict:
    """LearnerRank arguments for the tests (plain PPO, token aggregation, no KL/entropy/SFT). `over` may
    name TrainSettings and ObjectiveCoefs fields as well as LearnerRank arguments."""
    train = {k: over.pop(k) for k in [f.name for f in dataclasses.fields(TrainSettings)] if k in over}
    objective = {k: over.pop(k) for k in [f.name for f in dataclasses.fields(ObjectiveCoefs)] if k in over}
    kw = dict(
        model_dir=policy_dir,
        backend="gloo",
        train=train_settings(**train),
        objective=coefs(**objective),
        seed=0,
        threads=1,
        timeout_s=300.0,
    )
    kw.update(over)
    return kw
