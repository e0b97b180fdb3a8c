"""Helpers of the end-to-end tests: small configs of the CPU demo and the files a run writes."""

import json
import os

from orchestrator.validate import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = [
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "learner.micro_batch_size=8",
    "eval.num_problems=8",
    "eval.k=2",
    "train.eval_every=0",
    "cluster.num_cpus=2",
]
# Wall-clock measurements: the only keys allowed to differ between two runs of one config.
TIMING_PREFIXES = (
    "timing/",
    "perf/",
    "sync/stage_s",
    "sync/load_s",
    "sync/send_s",
    "sync/total_s",
    "reward/compute_s",
    "stream/scored_during_generation",
)


def rows(run_dir: str, name: str = "metrics.jsonl") -> list[dict]:
    with open(os.path.join(run_dir, name)) as fh:
        return [json.loads(line) for line in fh]


def config(run_dir: str, *extra: str):
    return load_config(os.path.join(ROOT, "configs", "demo_cpu.yaml"), [f"run_dir={run_dir}", *SMALL, *extra])


def without_timing(metric_rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in metric_rows]
