"""Placement across nodes: a simulated 4-node Ray cluster (ray.cluster_utils.Cluster), STRICT_SPREAD
bundles, and a one-step run. Every actor must land on its own node and the run must complete."""

import os

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.validate import load_config

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster():
    os.chdir(ROOT)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(4):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def test_roles_spread_over_nodes_and_run_completes(cluster, tmp_path):
    from orchestrator.train import run_train

    cfg = load_config(
        os.path.join(ROOT, "configs", "demo_cpu.yaml"),
        [
            f"run_dir={tmp_path / 'run'}",
            f"cluster.address={cluster.address}",
            "cluster.placement_strategy=STRICT_SPREAD",
            "train.steps=1",
            "train.eval_every=0",
            "rollout.prompts_per_step=4",
            "rollout.group_size=4",
            "learner.micro_batch_size=8",
            "eval.num_problems=4",
            "eval.k=1",
        ],
    )
    summary = run_train(cfg)
    placement = summary["placement"]
    nodes = [n for role in ("generator", "reward", "learner") for n in placement[role]]
    assert len(nodes) == 4 and len(set(nodes)) == 4, placement  # one bundle per node
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}
    assert set(nodes) <= alive
    assert summary["steps"] == 1 and summary["policy_version"] == 1
