"""Pure tests of the learner's objective, loss normalisation and lr schedule (no DeepSpeed, no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.batching import agg_units, micro_weight, position_ids, shard, shift_right
from learner.engine import accumulated_step, ds_config, lr_factor
from learner.objective import ObjectiveCoefs, check_policy_batch, micro_objective, units

LN2 = math.log(2.0)


def coefs(**over) -> ObjectiveCoefs:
    kw = dict(clip_low=0.2, clip_high=0.2, dual_clip=None, loss_agg="token", entropy_coef=0.0, kl_coef=0.0,
              kl_estimator="k1", sft_coef=0.0)
    kw.update(over)
    return ObjectiveCoefs(**kw)


def hand_batch() -> dict:
    """One row: 1 prompt token, 3 response tokens in steps [0, 0, 1] with advantages [1, 1, 4]."""
    return {
        "input_ids": torch.tensor([[0, 1, 0, 1]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "response_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]]),
        "step_index": torch.tensor([[-1, 0, 0, 1]]),
        "behavior_logprobs": torch.zeros(1, 4),
        "advantages": torch.tensor([[0.0, 1.0, 1.0, 4.0]]),
        "sample_valid": torch.ones(1),
        "ref_logprobs": torch.full((1, 4), math.log(0.25)),
        "sft_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]]),
    }


@pytest.mark.parametrize("agg, expected_policy", [("token", -2.0), ("step", -2.5), ("sequence", -2.0)])
def test_micro_objective_by_hand(agg, expected_policy):
    # Uniform logits over V=2: every log-prob is ln 0.5, every entropy ln 2; old = new so ratio = 1.
    # policy: token  -(1 + 1 + 4) / 3 = -2;  step  mean(-(1+1)/2, -4) = -2.5;  sequence  -2.
    # KL k1 = logprob - ref = ln 0.5 - ln 0.25 = ln 2 per token; SFT NLL = -ln 0.5 = ln 2.
    # loss = policy + 0.1 ln2 - 0.01 ln2 + 0.5 ln2 = policy + 0.59 ln2.
    batch = hand_batch()
    logits = torch.zeros(1, 4, 2)
    old = torch.tensor([[0.0, math.log(0.5), math.log(0.5), math.log(0.5)]])
    c = coefs(loss_agg=agg, kl_coef=0.1, entropy_coef=0.01, sft_coef=0.5)
    loss, m = micro_objective(logits, batch, old, (1.0, 1.0, 1.0), c)
    assert m["policy_loss"] == pytest.approx(expected_policy)
    assert m["entropy"] == pytest.approx(LN2)
    assert m["kl"] == pytest.approx(LN2)
    assert m["sft_nll"] == pytest.approx(LN2)
    assert float(loss) == pytest.approx(expected_policy + 0.59 * LN2)
    assert m["clip_frac"] == 0.0 and m["approx_kl"] == pytest.approx(0.0)


def test_agg_units_by_hand():
    mask = torch.tensor([[0.0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    step = torch.tensor([[-1, 0, 0, 1], [-1, -1, -1, -1], [0, 1, -1, -1]])
    assert float(agg_units(mask, step, "token")) == 5.0       # five real tokens
    assert float(agg_units(mask, step, "sequence")) == 2.0    # the empty row 1 does not count
    assert float(agg_units(mask, step, "step")) == 4.0        # row 0: steps 0, 1; row 2: steps 0, 1
    assert float(agg_units(mask, step, "token_sum_norm")) == 1.0
    assert micro_weight(torch.tensor(2.0), torch.tensor(8.0), "token") == 0.25
    assert micro_weight(torch.tensor(0.0), torch.tensor(0.0), "step") == 0.0
    assert micro_weight(torch.tensor(2.0), torch.tensor(8.0), "token_sum_norm") == 1.0
    with pytest.raises(ValueError, match="bogus"):
        agg_units(mask, step, "bogus")


def test_lr_factor_by_hand():
    # warm-up 4 of 12 steps: (s+1)/4 for s < 4, then cosine over the remaining 8 steps
    kw = dict(warmup_steps=4, total_steps=12, schedule="cosine")
    assert lr_factor(0, **kw) == pytest.approx(0.25)
    assert lr_factor(3, **kw) == pytest.approx(1.0)
    assert lr_factor(4, **kw) == pytest.approx(1.0)   # progress 0
    assert lr_factor(8, **kw) == pytest.approx(0.5)   # progress 4/8: (1 + cos(pi/2)) / 2
    assert lr_factor(12, **kw) == pytest.approx(0.0)  # progress 1
    assert lr_factor(30, **kw) == pytest.approx(0.0)  # clamped
    assert lr_factor(10, warmup_steps=0, total_steps=12, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, warmup_steps=0, total_steps=1, schedule="linear_decay")


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
    with pytest.raises(KeyError, match="advantages"):
        check_policy_batch({k: v for k, v in hand_batch().items() if k != "advantages"}, coefs())
    with pytest.raises(KeyError, match="ref_logprobs"):
        check_policy_batch({k: v for k, v in hand_batch().items() if k != "ref_logprobs"}, coefs(kl_coef=0.1))
    with pytest.raises(ValueError, match="zero_stage"):
        ds_config(zero_stage=4, micro_batch_size=1, grad_accum=1, grad_clip=1.0, bf16=False, world_size=1)


class FakeEngine:
    """The DeepSpeed engine calls accumulated_step makes, on plain autograd (world of one)."""

    dp_world_size = 1

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
    """d(loss)/d(logits) through learner.engine.accumulated_step with the given micro-batch size."""
    logits = logits0.clone().requires_grad_(True)
    old = torch.log_softmax(logits0, -1).gather(-1, batch["input_ids"][..., None])[..., 0].roll(1, 1) - 0.1

    def loss_fn(micro, rows, weights):
        return micro_objective(logits[rows], micro, old[rows], weights, c)

    accumulated_step(FakeEngine(), batch, micro_batch_size=micro_batch_size, unit_modes=(c.loss_agg, "token", "token"),
                     units_fn=lambda micro: units(micro, c), loss_fn=loss_fn)
    return logits.grad


@pytest.mark.parametrize("agg", ["token", "step", "sequence", "token_sum_norm"])
def test_micro_batching_gives_the_global_gradient(agg):
    # Invariance: cutting the batch into micro-batches (here 2, 2, 1 rows) changes nothing.
    batch = random_batch(5)
    logits0 = torch.randn(5, 7, 5, generator=torch.Generator().manual_seed(1))
    c = coefs(loss_agg=agg, kl_coef=0.2, entropy_coef=0.05, sft_coef=0.3, dual_clip=3.0)
    whole = accumulated_grad(batch, logits0, c, micro_batch_size=5)
    parts = accumulated_grad(batch, logits0, c, micro_batch_size=2)
    assert whole.abs().sum() > 0
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("agg", ["token", "step", "sequence"])
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
