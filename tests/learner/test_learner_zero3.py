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
