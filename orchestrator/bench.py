"""`steprl bench CONFIG`: time each arrow of a train step (generation, scoring, learner, weight sync).

Starts the same roles as `steprl train`, runs `train.steps` real train steps, and writes the medians (after
the first, warm-up step) and every step's raw timings to JSON. Speed lives here, never in tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import ray
from omegaconf import DictConfig

from engine.process import prepare_process
from orchestrator.data import prompt_requests, step_problems, task_from_config
from orchestrator.roles import start_roles
from orchestrator.rundir import atomic_write_text, jsonable, open_run_dir
from orchestrator.runtime import init_ray
from orchestrator.step import train_step

KEYS = (
    "timing/generate_s",
    "timing/reward_s",
    "timing/train_s",
    "timing/sync_s",
    "timing/step_s",
    "sync/load_s",
    "sync/send_s",
    "sync/total_s",
    "perf/tokens_per_s",
    "stream/scored_during_generation",
)


def config_as_given(path: str) -> str:
    """The config path as typed (relative to where steprl ran): the JSON is committed, so it must not
    carry the directory layout of the machine that measured it. An absolute path becomes relative."""
    return os.path.relpath(path) if os.path.isabs(path) else path


def run_bench(cfg: DictConfig, args=None) -> dict:
    from orchestrator.train import ensure_policy, settings

    run_dir = open_run_dir(cfg)
    prepare_process(cfg.cluster.threads_per_actor)
    policy_dir, task = ensure_policy(cfg), task_from_config(cfg)
    t0 = time.time()
    started = not ray.is_initialized()
    init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.threads_per_actor)
    t_ray = time.time()
    roles = start_roles(cfg, policy_dir, total_updates=max(1, cfg.train.steps), run_dir=run_dir)
    t_roles = time.time()
    steps, version = [], 0
    try:
        for step in range(1, cfg.train.steps + 1):
            requests = prompt_requests(task, step_problems(cfg, task, step - 1))
            m, _ = train_step(roles, settings(cfg, roles, step), requests, version)
            version = m.get("policy_version", version)
            steps.append({k: m[k] for k in KEYS if k in m})
    finally:
        roles.shutdown()
        if started:
            ray.shutdown()
    measured = steps[1:] or steps
    result = {
        "config": config_as_given(args.config) if args else None,
        "steps": len(steps),
        "samples_per_step": cfg.rollout.prompts_per_step * cfg.rollout.group_size,
        "learner_ranks": cfg.learner.num_ranks,
        "zero_stage": cfg.learner.zero_stage,
        "sync_method": cfg.sync.method,  # timing/sync_s and sync/* depend on it: bench each method
        "ray_init_s": t_ray - t0,
        "roles_start_s": t_roles - t_ray,
        "median": {k: statistics.median(s[k] for s in measured) for k in KEYS if k in measured[0]},
        "per_step": steps,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    out = (args.out if args and args.out else None) or os.path.join(run_dir, "bench.json")
    atomic_write_text(out, json.dumps(jsonable(result), indent=1) + "\n")
    print(f"sync.method={cfg.sync.method}")
    print(json.dumps(jsonable(result["median"]), indent=1))
    print(f"bench: {out}")
    return {"bench": out, **result["median"]}
