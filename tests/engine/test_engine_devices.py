"""Where every role's model and tensors live, and in which dtype: engine.process.role_device / role_dtype,
the batch and collective plumbing of engine.batching, and the driver's bf16 check (orchestrator.validate)."""

from __future__ import annotations

import pytest
import torch

import engine.process as process
from engine.batching import all_reduce_sum, to_device
from engine.process import role_device, role_dtype


def test_explicit_device_wins():
    assert role_device("cpu") == torch.device("cpu")
    assert role_device("cuda:1") == torch.device("cuda", 1)  # only named: nothing is allocated


def test_no_ray_gpu_means_cpu(monkeypatch):
    monkeypatch.setattr(process, "_ray_gpu_ids", lambda: [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU Ray did not reserve stays unused
    assert role_device() == torch.device("cpu")


def test_a_gpu_from_ray_is_cuda_0(monkeypatch):
    # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU, so whatever its id it is cuda:0 in the actor.
    monkeypatch.setattr(process, "_ray_gpu_ids", lambda: [3])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert role_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # an assigned GPU torch cannot see
    assert role_device() == torch.device("cpu")


def test_outside_ray_is_cpu():
    assert process._ray_gpu_ids() == []  # no Ray in this process: nothing was assigned
    assert role_device() == torch.device("cpu")


def test_role_dtype():
    cpu = torch.device("cpu")
    assert role_dtype("float32", cpu) is torch.float32  # (which names exist is config validation's job)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert role_dtype("bfloat16", cpu) is torch.bfloat16
    else:
        with pytest.raises(RuntimeError, match="no bf16 kernels"):
            role_dtype("bfloat16", cpu)


def test_to_device_and_all_reduce_on_a_device():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "mask": torch.ones(2, 3)}
    moved = to_device(batch, torch.device("meta"))  # a device that is not the CPU, available everywhere
    assert {v.device.type for v in moved.values()} == {"meta"} and moved["input_ids"].dtype == torch.long
    x = all_reduce_sum(torch.ones(2), torch.device("meta"))  # no world: identity, but on the device asked
    assert x.device.type == "meta"


def test_cpu_bf16_kernels_agrees_with_torch_here():
    from orchestrator.validate import cpu_bf16_kernels

    with open("/proc/cpuinfo") as fh:
        flags = {w for line in fh if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    assert cpu_bf16_kernels(flags) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not cpu_bf16_kernels({"avx2", "fma", "avx512f"})  # AVX2 / AVX-512F only: no native bf16
    assert cpu_bf16_kernels({"amx_bf16"}) and cpu_bf16_kernels({"asimd", "bf16"})


def test_local_bf16_check_refuses_a_cpu_without_bf16(tmp_path):
    from omegaconf import OmegaConf

    from orchestrator.config import ExperimentConfig
    from orchestrator.validate import ConfigError, _check_local_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    cfg = OmegaConf.structured(ExperimentConfig)
    _check_local_bf16(cfg, str(cpuinfo))  # float32: nothing to check
    cfg.model.dtype = "bfloat16"
    with pytest.raises(ConfigError, match="model.dtype: bfloat16 needs bf16 kernels.*generator, learner"):
        _check_local_bf16(cfg, str(cpuinfo))
    for role in cfg.cluster.roles:
        cfg.cluster.roles[role].num_gpus = 1.0
    _check_local_bf16(cfg, str(cpuinfo))  # every role on a GPU: the CPU does not matter
    cfg.cluster.roles.learner.num_gpus = 0.0
    cfg.cluster.address = "auto"
    _check_local_bf16(cfg, str(cpuinfo))  # roles on other machines: each role checks itself
