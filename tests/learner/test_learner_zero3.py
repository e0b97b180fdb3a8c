"""ZeRO-3 on 2 ranks: parameters are partitioned, so export, fingerprint and save_hf must gather them."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, rank_kwargs

from algo.fingerprint import fingerprints_match, weights_fingerprint

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`


@pytest.fixture(scope="module")
def group3(ray_local, policy_dir):
    from ray.util.placement_group import placement_group, remove_placement_group

    from learner.group import LearnerGroup

    # this group also exercises the placement-group path (rank i in bundle bundle_indices[i])
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    ray_local.get(pg.ready(), timeout=60)
    g = LearnerGroup(
        num_ranks=2,
        rank_kwargs=rank_kwargs(policy_dir, zero_stage=3, micro_batch_size=4),
        timeout_s=300,
        placement_group=pg,
        bundle_indices=[1, 0],
    )
    yield g
    g.shutdown()
    remove_placement_group(pg)


def partition_sizes(rank) -> tuple[int, int, int]:
    """(elements in the module's parameter tensors, in this rank's partitions, in the full model)."""
    params = list(rank.engine.module.parameters())
    return sum(p.numel() for p in params), sum(p.ds_tensor.numel() for p in params), sum(p.ds_numel for p in params)


def test_zero3_ranks_hold_only_their_partition(group3, ray_local):
    # Runs first (file order), before any update: each rank holds half the weights and no full tensor.
    # That the model was built partitioned (zero.Init, not a full copy partitioned later by the engine)
    # is checked in process in test_learner_devices.py::test_zero3_model_is_built_partitioned.
    sizes = ray_local.get([r.__ray_call__.remote(partition_sizes) for r in group3.ranks], timeout=60)
    full = sizes[0][2]
    assert all(held == 0 for held, _, _ in sizes)
    assert all(part <= full // 2 + 64 for _, part, _ in sizes) and sum(part for _, part, _ in sizes) >= full


def test_zero3_export_gathers_full_weights(group3, policy_dir, ray_local, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    named = ray_local.get(group3.export_weights(), timeout=60)
    # Before any update: exactly the initial weights, full shapes, HF names, nothing left partitioned.
    assert [n for n, _ in named] == [n for n, _ in hf.named_parameters()]
    for (n, t), (_, p) in zip(named, hf.named_parameters(), strict=True):
        torch.testing.assert_close(t, p.detach(), rtol=0, atol=0, msg=n)

    m = group3.train_step(make_batch(8, seed=11))
    assert m["grad_norm"] > 0
    fps = group3.rank_fingerprints()
    assert fps[0] == fps[1]
    named = ray_local.get(group3.export_weights(), timeout=60)
    assert fingerprints_match(weights_fingerprint(named), fps[0])
    assert sum(t.numel() for _, t in named) == sum(p.numel() for p in hf.parameters())

    out = group3.save_hf(str(tmp_path / "hf"))
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert fingerprints_match(weights_fingerprint(saved.named_parameters()), fps[0])


class Receiver:
    """A generator's stand-in on the collective sync (gloo)."""

    def receive(self, c: dict) -> dict:
        from algo.fingerprint import tensor_hashes
        from engine.broadcast import BroadcastChannel

        keys = ("master_addr", "master_port", "world_size", "backend", "device")
        channel = BroadcastChannel(rank=1, timeout_s=60, **{k: c[k] for k in keys})
        return tensor_hashes(list(channel.receive(c["meta"])))


def test_zero3_collective_sync_gathers_and_broadcasts_full_weights(group3, ray_local):
    """Every rank takes part in send_weights (the gathers) while rank 0 alone broadcasts."""
    from algo.fingerprint import hash_mismatches

    receiver = ray_local.remote(num_cpus=0)(Receiver).remote()
    channel = group3.weight_channel(world_size=2)
    sent = group3.send_weights(channel)
    got = receiver.receive.remote(channel)
    rank0, rank1, received = group3.wait(sent + [got], "broadcast", names=["rank 0", "rank 1", "receiver"])
    assert rank1 == {} and rank0["tensors"] == len(channel["meta"])
    assert hash_mismatches(rank0["hashes"], received) == []
    ray_local.get(group3.export_weights(), timeout=60)
    assert hash_mismatches(group3.last_export["hashes"], received) == []
    ray_local.kill(receiver)
