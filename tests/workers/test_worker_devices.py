"""Each worker runs its model on the device it is given (the GPU Ray assigned, else the CPU) in model.dtype,
feeds that device to the forward, and hands CPU tensors / Python numbers back to the driver.

Here the device is the CPU (no GPU on our machines): the tests pin the plumbing -- where the parameters
live, which device the forward's inputs are on, what leaves the worker -- so a GPU run only changes the
device name. The critic needs DeepSpeed (heavy); reference and PRM are plain torch.
"""

from __future__ import annotations

import os

import pytest
import torch

from algo.trajectory import Trajectory

os.environ.setdefault("DS_ACCELERATOR", "cpu")
BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # engine.process.role_dtype refuses bf16 otherwise


def record_inputs(model: torch.nn.Module) -> list[torch.device]:
    """Devices of the input_ids of every forward of `model` (a pre-hook sees what the model is fed)."""
    seen: list[torch.device] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].device), with_kwargs=True)
    return seen


def devices(model: torch.nn.Module) -> set[torch.device]:
    return {p.device for p in model.parameters()}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> str:
    from tasks.models import make_tiny_policy
    from tasks.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["1+5-8+4=", "1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2"], vocab_size=258)
    path = tmp_path_factory.mktemp("tiny_policy")
    make_tiny_policy(path, tok, hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, seed=0)
    return str(path)


def small_batch(B: int = 3, L: int = 9) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(2, 258, (B, L), generator=g), "attention_mask": torch.ones(B, L).long()}


@pytest.mark.parametrize(
    "dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(not BF16, reason="no bf16 CPU"))]
)
def test_reference_device_and_dtype(policy_dir, dtype):
    from workers.reference import ReferenceWorker

    ref = ReferenceWorker(model_dir=policy_dir, micro_batch_size=2, dtype=dtype, device="cpu")
    assert ref.device == torch.device("cpu") and devices(ref.model) == {ref.device}
    assert {p.dtype for p in ref.model.parameters()} == {getattr(torch, dtype)}
    seen = record_inputs(ref.model)
    lp = ref.logprobs(small_batch())
    assert seen == [ref.device, ref.device]  # two micro-batches, both fed on the model's device
    assert lp.device.type == "cpu" and lp.dtype == torch.float32 and bool(torch.isfinite(lp).all())


@pytest.mark.parametrize(
    "dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(not BF16, reason="no bf16 CPU"))]
)
def test_prm_source_device_and_dtype(policy_dir, tmp_path, dtype):
    from tasks.models import make_tiny_prm
    from workers.reward import RewardWorker

    make_tiny_prm(tmp_path / "prm", policy_dir=policy_dir)
    w = RewardWorker(
        tokenizer_dir=policy_dir,
        sources=[{"name": "prm", "path": str(tmp_path / "prm")}],
        meaning="step_correct",
        transform="identity",
        transform_params={},
        task_kind="arithmetic",
        dtype=dtype,
        device="cpu",
    )
    prm = w.step_sources[0][2]
    model = next(c.cell_contents for c in prm.__closure__ if isinstance(c.cell_contents, torch.nn.Module))
    assert devices(model) == {w.device} and {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    seen = record_inputs(model)
    traj = Trajectory(
        uid="u",
        prompt_id="p",
        group_id=0,
        policy_version=0,
        prompt_ids=[5, 6],
        response_ids=[7, 8, 9],
        behavior_logprobs=[0.0] * 3,
        finish_reason="stop",
        step_spans=[(0, 3)],
        prompt_text="1+2=\n",
    )
    scores = prm(traj, ["1+2=3\n", "A3\n"])
    assert seen == [w.device]
    assert all(type(s) is float for s in scores) and scores == [0.5, 0.5]  # untrained PRM head: sigmoid(0)


@pytest.mark.heavy  # DeepSpeed
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_critic_device(policy_dir, zero_stage):
    from engine.build import TrainSettings
    from workers.critic import CriticWorker

    train = TrainSettings(
        lr=1e-3,
        weight_decay=0.0,
        warmup_steps=0,
        total_steps=10,
        schedule="constant",
        grad_clip=1.0,
        zero_stage=zero_stage,
        micro_batch_size=2,
        epochs=1,
        mini_batches=1,
        bf16=BF16,  # the bf16 path where this CPU has it
    )
    critic = CriticWorker(model_dir=policy_dir, train=train, value_clip=0.2, loss_agg="token", seed=0, device="cpu")
    module = critic.engine.module
    assert devices(module) == {critic.device}
    if zero_stage == 3:  # built partitioned (engine.build.model_init_context): no full tensor on the rank
        assert all(p.numel() == 0 for p in module.parameters())
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16 if BF16 else torch.float32}
    seen = record_inputs(module)
    b = small_batch(B=4)
    v = critic.values(b)
    assert seen == [critic.device] * 2 and v.device.type == "cpu" and v.dtype == torch.float32
    assert (v == 0).all()  # the fresh head was zeroed, under ZeRO-3 through its gathered partitions
    resp = torch.zeros(4, 9)
    resp[:, 4:] = 1.0
    b.update(response_mask=resp, step_index=(resp - 1).long(), sample_valid=torch.ones(4), returns=resp * 0.5)
    m = critic.train_step(b)
    assert all(seen_device == critic.device for seen_device in seen)
    assert all(type(x) is float for x in m.values()) and m["value_loss"] > 0
