"""A LearnerRank in this process (a DeepSpeed world of one) on an explicit device, in model.dtype.

Pins: parameters on the role's device, every forward fed on it, CPU tensors / floats out; DeepSpeed bf16
(where this CPU has bf16 kernels) trains with finite loss and exports bfloat16 weights; under ZeRO-3 the
model is built already partitioned (engine.build.model_init_context) and still exports the exact weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_batch, rank_kwargs, train_settings

pytestmark = pytest.mark.heavy  # DeepSpeed

BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # engine.process.role_dtype refuses bf16 otherwise
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no bf16 kernels")


def make_rank(policy_dir, **over):
    from engine.build import free_port
    from learner.rank import LearnerRank

    return LearnerRank(
        rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(), **rank_kwargs(policy_dir, **over)
    )


def hf_weights(policy_dir: str, dtype: torch.dtype) -> list[tuple[str, torch.Tensor]]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    return [(n, p.detach().to(dtype)) for n, p in hf.named_parameters()]


@needs_bf16
def test_bf16_rank_on_its_device_trains_and_exports_bf16(policy_dir):
    rank = make_rank(policy_dir, bf16=True, micro_batch_size=4, device="cpu")
    module = rank.engine.module
    assert rank.device == torch.device("cpu") and {p.device for p in module.parameters()} == {rank.device}
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}  # DeepSpeed's bf16 copy of the model
    seen: list[torch.device] = []
    module.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].device), with_kwargs=True)
    batch = make_batch(8, seed=3)
    before = rank.named_weights()
    m = rank.train_step(batch)
    assert seen and set(seen) == {rank.device}  # 2 micro-batches for the old log-probs, 2 for the update
    assert all(type(v) is float and math.isfinite(v) for v in m.values()) and m["grad_norm"] > 0
    after = rank.named_weights()
    assert {t.dtype for _, t in after} == {torch.bfloat16} and {t.device.type for _, t in after} == {"cpu"}
    assert any(not torch.equal(a, b) for (_, a), (_, b) in zip(after, before, strict=True))  # it learned
    lp = rank.logprobs(batch)
    assert lp.device.type == "cpu" and lp.dtype == torch.float32 and bool(torch.isfinite(lp).all())


def test_fp32_rank_exports_fp32(policy_dir):
    rank = make_rank(policy_dir, device="cpu")
    named = rank.named_weights()
    assert {t.dtype for _, t in named} == {torch.float32}
    for (n, t), (_, ref) in zip(named, hf_weights(policy_dir, torch.float32), strict=True):
        torch.testing.assert_close(t, ref, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=needs_bf16)])
def test_zero3_model_is_built_partitioned(policy_dir, bf16):
    from transformers import AutoModelForCausalLM

    from engine.build import free_port, init_distributed, model_init_context

    init_distributed(0, 1, "127.0.0.1", free_port(), "gloo")  # a no-op when an earlier test made the world
    train = train_settings(zero_stage=3, bf16=bf16)
    with model_init_context(train):
        model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    params = list(model.parameters())
    # Right after construction, before any DeepSpeed engine: every parameter is a ZeRO-3 partition (the
    # full tensor is never materialised on a rank), holding its share of the checkpoint's weights.
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in params)
    assert sum(p.ds_tensor.numel() for p in params) >= sum(p.ds_numel for p in params)  # world of one: all
    with model_init_context(train_settings(zero_stage=2)):  # other stages build plain models
        plain = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    assert not any(hasattr(p, "ds_id") for p in plain.parameters())

    rank = make_rank(policy_dir, zero_stage=3, bf16=bf16, device="cpu")  # the same seam inside LearnerRank
    dtype = torch.bfloat16 if bf16 else torch.float32
    for (n, t), (_, ref) in zip(rank.named_weights(), hf_weights(policy_dir, dtype), strict=True):
        torch.testing.assert_close(t, ref, rtol=0, atol=0, msg=n)  # gathered, exact, in model.dtype
    m = rank.train_step(make_batch(4, seed=5))
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0


def test_a_device_deepspeed_did_not_use_is_an_error(policy_dir):
    # DeepSpeed puts the model on its accelerator's device; a role told otherwise (here "meta", on a GPU
    # machine a CPU role whose DeepSpeed found CUDA) fails at start-up, not with a device mismatch later.
    with pytest.raises(RuntimeError, match="DeepSpeed placed the model on cpu but this role runs on meta"):
        make_rank(policy_dir, device="meta")
