"""Pure tests of the batch plumbing every trained model shares (engine/batching.py) and of the DeepSpeed
config (engine/build.py): exact loss normalisation over micro-batches, shards, positions. No DeepSpeed
engine, no Ray: accumulated_step runs on a fake engine over plain autograd."""

from __future__ import annotations

import pytest
import torch

from algo import registry
from engine.batching import (
    accumulated_step,
    epochs_of_updates,
    forward_logits,
    micro_weight,
    position_ids,
    shard,
    shift_right,
)
from engine.build import ds_config
from learner.objective import ObjectiveCoefs, micro_objective, units


def coefs(**over) -> ObjectiveCoefs:
    kw = dict(
        clip_low=0.2,
        clip_high=0.2,
        dual_clip=None,
        loss_agg="token",
        entropy_coef=0.0,
        kl_coef=0.0,
        kl_estimator="k1",
        sft_coef=0.0,
    )
    kw.update(over)
    return ObjectiveCoefs(**kw)


def test_micro_weight_by_hand():
    assert micro_weight(torch.tensor(2.0), torch.tensor(8.0)) == 0.25
    assert micro_weight(torch.tensor(0.0), torch.tensor(0.0)) == 0.0  # nothing anywhere: no weight, no 0/0


def test_shift_and_positions():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert shift_right(x).tolist() == [[0.0, 1.0, 2.0]]
    # left padding: real tokens still count from 0
    assert position_ids(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_shard_and_clear_errors():
    batch = {"input_ids": torch.arange(6)[:, None], "sample_valid": torch.ones(6)}
    shards = shard(batch, 2)
    assert [s["input_ids"].flatten().tolist() for s in shards] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="multiple of the number of learner ranks"):
        shard({"input_ids": torch.zeros(7, 2)}, 2)
    with pytest.raises(ValueError, match="'sample_valid'"):
        shard({"input_ids": torch.zeros(4, 2), "sample_valid": torch.ones(3)}, 2)


def test_ds_config_errors():
    with pytest.raises(ValueError, match="zero_stage"):
        ds_config(zero_stage=4, micro_batch_size=1, grad_accum=1, grad_clip=1.0, bf16=False, world_size=1)


class FakeEngine:
    """The DeepSpeed engine calls accumulated_step makes, on plain autograd (world of one)."""

    dp_world_size = 1
    device = torch.device("cpu")  # where a DeepSpeed engine's module lives

    def set_train_batch_size(self, n):
        pass

    def set_gradient_accumulation_boundary(self, flag):
        self.boundary = flag

    def backward(self, loss, scale_wrt_gas=True):
        assert scale_wrt_gas is False  # our weights already normalise
        loss.backward()

    def get_lr(self):
        return [0.1]

    def step(self):
        assert self.boundary  # step only after the last micro-batch

    def get_global_grad_norm(self):
        return None


def random_batch(B: int, L: int = 7, V: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    resp = torch.zeros(B, L)
    step = torch.full((B, L), -1)
    for b in range(B):
        n = 2 + b % 4  # responses of 2..5 tokens after a 2-token prompt
        resp[b, 2 : 2 + n] = 1.0
        step[b, 2 : 2 + n] = torch.arange(n) // 2
    return {
        "input_ids": torch.randint(0, V, (B, L), generator=g),
        "attention_mask": torch.ones(B, L, dtype=torch.long),
        "response_mask": resp,
        "step_index": step,
        "behavior_logprobs": torch.zeros(B, L),
        "advantages": torch.randn(B, L, generator=g),
        "sample_valid": torch.ones(B),
        "ref_logprobs": -torch.rand(B, L, generator=g) - 1.0,
        "sft_mask": resp * (torch.arange(B) % 2 == 0).float()[:, None],
    }


def accumulated_grad(batch: dict, logits0: torch.Tensor, c: ObjectiveCoefs, micro_batch_size: int) -> torch.Tensor:
    """d(loss)/d(logits) through engine.batching.accumulated_step with the given micro-batch size."""
    logits = logits0.clone().requires_grad_(True)
    old = torch.log_softmax(logits0, -1).gather(-1, batch["input_ids"][..., None])[..., 0].roll(1, 1) - 0.1

    def loss_fn(micro, rows, weights):
        return micro_objective(logits[rows], micro, old[rows], weights, c)

    accumulated_step(
        FakeEngine(), batch, micro_batch_size=micro_batch_size, units_fn=lambda micro: units(micro, c), loss_fn=loss_fn
    )
    return logits.grad


@pytest.mark.parametrize("agg", registry.LOSS_AGGREGATIONS)
def test_micro_batching_gives_the_global_gradient(agg):
    # Invariance: cutting the batch into micro-batches (here 2, 2, 1 rows) changes nothing.
    batch = random_batch(5)
    logits0 = torch.randn(5, 7, 5, generator=torch.Generator().manual_seed(1))
    c = coefs(loss_agg=agg, kl_coef=0.2, entropy_coef=0.05, sft_coef=0.3, dual_clip=3.0)
    whole = accumulated_grad(batch, logits0, c, micro_batch_size=5)
    parts = accumulated_grad(batch, logits0, c, micro_batch_size=2)
    assert whole.abs().sum() > 0
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("agg", registry.LOSS_AGGREGATIONS)
def test_masked_samples_change_nothing(agg):
    # Two extra samples (rows 1 and 4) with sample_valid = 0 and wild advantages: the valid rows'
    # gradient is the same as without them, and the masked rows get no gradient. Micro-batches of 3
    # cut the two batches differently ([0 m 2][3 m 5] vs [0 2 3][5]), so only exact weights pass.
    batch = random_batch(6, seed=3)
    logits0 = torch.randn(6, 7, 5, generator=torch.Generator().manual_seed(2))
    c = coefs(loss_agg=agg, kl_coef=0.2, entropy_coef=0.05, sft_coef=0.3)
    keep = torch.tensor([0, 2, 3, 5])
    without = accumulated_grad({k: v[keep] for k, v in batch.items()}, logits0[keep], c, micro_batch_size=3)
    batch["sample_valid"][[1, 4]] = 0.0
    batch["advantages"][[1, 4]] = 1e6
    with_masked = accumulated_grad(batch, logits0, c, micro_batch_size=3)
    torch.testing.assert_close(with_masked[keep], without, rtol=1e-5, atol=1e-7)
    assert with_masked[[1, 4]].abs().max() == 0.0


def test_epochs_of_updates_averages_over_every_update():
    # 2 epochs x 2 mini-batches of a 4-row batch: 4 updates, each on 2 distinct rows, every row once per epoch.
    batch = {"input_ids": torch.arange(4)[:, None]}
    seen, calls = [], []

    def update(mini, rows):
        seen.append(sorted(mini["input_ids"].flatten().tolist()))
        calls.append(sorted(rows.tolist()))
        n = len(calls)
        return {"loss": float(n)}, 10.0 * n, 0.5 * n  # update n: loss n, grad norm 10 n, lr n / 2

    m = epochs_of_updates(batch, epochs=2, mini_batches=2, update=update, keys=("loss", "kl"))
    assert seen == calls and len(calls) == 4
    assert sorted(calls[0] + calls[1]) == [0, 1, 2, 3] and sorted(calls[2] + calls[3]) == [0, 1, 2, 3]
    # loss (1 + 2 + 3 + 4) / 4 = 2.5; kl never reported -> 0; grad norm 25; lr of the last update 2.0
    assert m == {"loss": 2.5, "kl": 0.0, "grad_norm": 25.0, "lr": 2.0}


def test_forward_logits_skips_trailing_padding_and_changes_no_real_position():
    # Rows of 3 and 5 real tokens right-padded to 8: the model sees 5 columns; columns 5-7 come back as zeros,
    # and every real position's logits equal those of the padded forward (masked keys take no part).
    from transformers import Qwen2ForCausalLM

    from tasks.models import tiny_qwen2_config

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        tiny_qwen2_config(vocab_size=32, eos_id=1, pad_id=0, hidden=64, heads=2, kv_heads=1, layers=2)
    ).eval()
    ids = torch.randint(2, 32, (2, 8))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    with torch.no_grad():
        cut = forward_logits(model, ids, mask)
        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    assert seen == [5, 8] and cut.shape == full.shape  # the cut forward, then the full one
    assert float(cut[:, 5:].abs().sum()) == 0.0
    for row, n in enumerate((3, 5)):
        torch.testing.assert_close(cut[row, :n], full[row, :n], rtol=1e-5, atol=1e-5)
