"""One LearnerRank in this process (a DeepSpeed world of one): the PPO epoch / mini-batch loop."""

from __future__ import annotations

import math

import pytest
from conftest import make_batch, rank_kwargs

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`


@pytest.fixture(scope="module")
def rank(policy_dir):
    from engine.build import free_port
    from learner.rank import LearnerRank

    return LearnerRank(
        rank=0,
        world_size=1,
        master_addr="127.0.0.1",
        master_port=free_port(),
        **rank_kwargs(
            policy_dir,
            epochs=2,
            mini_batches=2,
            micro_batch_size=3,
            warmup_steps=4,
            kl_coef=0.1,
            entropy_coef=0.01,
            sft_coef=0.5,
        ),
    )


def test_epochs_times_minibatches_updates(rank):
    batch = make_batch(8, seed=21)
    batch["ref_logprobs"] = batch["behavior_logprobs"].clone()
    batch["sft_mask"] = batch["response_mask"] * (batch["advantages"] > 0)
    steps = rank.global_steps()
    m = rank.train_step(batch)
    assert rank.global_steps() == steps + 4  # 2 epochs x 2 mini-batches
    # warm-up of 4 steps: the 4th update (step index 3) runs at the full lr 1e-3 x (3 + 1) / 4
    assert m["lr"] == pytest.approx(1e-3)
    # after the first update the ratio moves off 1, so the PPO statistics become non-zero
    assert m["approx_kl"] > 0 and all(math.isfinite(v) for v in m.values())
    assert m["kl"] > 0 and m["sft_nll"] > 0


def test_bad_batches_are_named(rank):
    # (bad settings such as algo.loss_agg=per_token are config errors: tests/orchestrator/test_config.py)
    batch = make_batch(4, seed=22)
    batch["ref_logprobs"] = batch["behavior_logprobs"].clone()
    with pytest.raises(KeyError, match="sft_mask"):  # sft_coef > 0 needs it
        rank.train_step(batch)
