"""`steprl bench CONFIG --modes sync,async`: where each second of a train step goes, and what overlap buys.

Starts the same roles as `steprl train` once, then runs `train.steps` real train steps per mode, one mode after
the other on the same roles: `sync` (train.max_staleness=0) and `async` (the config's max_staleness, at least
1: the next batch is generated while the learner trains). The first step of each mode warms up and is not
counted. Per mode: samples/s and tokens/s over the counted steps' wall time, and the share of that time each
arrow took (`share/*`; in async mode generation overlaps training, so the shares add up to more than 1).
Beside them, measured in the same run: the generator engine's tokens/s outside the loop on the same prompts,
the learner's achieved GFLOP/s next to a one-thread GEMM's, and the start-up time (process start to the first
step). Speed lives here, never in tests.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from contextlib import closing

import psutil
import ray
import torch
from omegaconf import DictConfig

from engine.process import prepare_process
from orchestrator.data import task_from_config
from orchestrator.roles import start_roles
from orchestrator.rundir import atomic_write_text, jsonable, open_run_dir
from orchestrator.runtime import init_ray, ray_get
from orchestrator.step import train_step
from orchestrator.validate import ConfigError
from workers.vllm_setup import checkpoint_shapes

KEYS = (  # per-step timings kept in the JSON
    "timing/generate_s",
    "timing/reward_s",
    "timing/wait_s",
    "timing/train_s",
    "timing/sync_s",
    "timing/sync_overlapped_s",
    "timing/step_s",
    "sync/stage_s",
    "sync/load_s",
    "async/staleness_mean",
    "offpolicy/ratio_std",
    "clip_frac",
    "stream/scored_during_generation",
)
# share/<arrow> = total seconds of this per-step key / wall time of the counted steps
SHARES = {
    "generate": "timing/generate_s",
    "reward": "timing/reward_s",
    "wait": "timing/wait_s",
    "train": "timing/train_s",
    "sync": "timing/sync_s",  # weight sync on the learner's path (the learner and generators both wait)
    "sync_overlapped": "timing/sync_overlapped_s",  # generators loading staged weights while the learner trains
}
MODES = {"sync": lambda k: 0, "async": lambda k: max(1, k)}  # mode -> its train.max_staleness


def config_as_given(path: str) -> str:
    """The config path as typed (relative to where steprl ran): the JSON is committed, so it must not
    carry the directory layout of the machine that measured it. An absolute path becomes relative."""
    return os.path.relpath(path) if os.path.isabs(path) else path


def run_bench(cfg: DictConfig, args=None) -> dict:
    from orchestrator.train import ensure_policy

    modes = parse_modes(getattr(args, "modes", None) or "sync", cfg.train.steps)
    process_start = psutil.Process().create_time()
    run_dir = open_run_dir(cfg)
    prepare_process(cfg.cluster.threads_per_actor)
    policy_dir, task = ensure_policy(cfg), task_from_config(cfg)
    t0 = time.time()
    started = not ray.is_initialized()
    init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.threads_per_actor)
    t_ray = time.time()
    roles = start_roles(cfg, policy_dir, total_updates=len(modes) * cfg.train.steps, run_dir=run_dir)
    t_roles = time.time()
    result: dict = {
        "config": config_as_given(args.config) if args else None,
        "steps_per_mode": cfg.train.steps,
        "samples_per_step": cfg.rollout.prompts_per_step * cfg.rollout.group_size,
        "learner_ranks": cfg.learner.num_ranks,
        "zero_stage": cfg.learner.zero_stage,
        "sync_method": cfg.sync.method,
        "off_policy": cfg.algo.off_policy,
        "startup_s": t_roles - process_start,  # process start -> roles ready: what a user waits for
        "startup/imports_and_checks_s": t0 - process_start,
        "startup/ray_init_s": t_ray - t0,
        "startup/roles_start_s": t_roles - t_ray,
        "modes": {},
    }
    try:
        result.update(standalone_rates(cfg, roles, task), **{"gemm/gflops": gemm_gflops()})
        params = sum(math.prod(shape) for shape in checkpoint_shapes(policy_dir).values())
        version = 0
        for mode in modes:
            k = MODES[mode](cfg.train.max_staleness)
            steps, version = bench_steps(cfg, roles, task, k, version)
            result["modes"][mode] = mode_summary(steps[1:], k, params, cfg.learner.ppo_epochs)
    finally:
        roles.shutdown()
        if started:
            ray.shutdown()
    summarise(result)
    out = (args.out if args and args.out else None) or os.path.join(run_dir, "bench.json")
    atomic_write_text(out, json.dumps(jsonable(result), indent=1) + "\n")
    print(json.dumps(jsonable({k: v for k, v in result.items() if k != "modes"}), indent=1))
    for mode, m in result["modes"].items():
        print(mode, json.dumps(jsonable({k: v for k, v in m.items() if k != "per_step"}), indent=1))
    print(f"bench: {out}")
    return {"bench": out, **{f"{mode}/samples_per_s": m["samples_per_s"] for mode, m in result["modes"].items()}}


def parse_modes(text: str, steps: int) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"--modes {text!r}: expected a comma-separated list of {', '.join(MODES)}")
    if steps < 2:
        raise ConfigError(f"train.steps={steps}: bench needs at least 2 (the first step of each mode warms up)")
    return modes


def standalone_rates(cfg: DictConfig, roles, task) -> dict:
    """Generator 0's tokens/s outside the loop on step 1's prompts (GeneratorWorker.standalone_rate)."""
    from orchestrator.train import step_requests

    r = cfg.rollout
    call = roles.generators.actors[0].standalone_rate.remote(
        step_requests(cfg, task, 1), n=r.group_size, temperature=r.temperature, max_tokens=r.max_new_tokens
    )
    rates = ray_get(call, "generator", "standalone_rate", cfg.train.timeout_s)
    return {
        "generator/standalone_tok_s": rates["bare_tok_s"],
        "generator/standalone_generate_tok_s": rates["generate_tok_s"],
    }


def bench_steps(cfg: DictConfig, roles, task, max_staleness: int, version: int) -> tuple[list[dict], int]:
    """train.steps real train steps with the train loop's pipeline at `max_staleness`; each step's KEYS and
    token counts, and the policy version after them (the generators hold it)."""
    from orchestrator.train import make_pipeline, settings

    pipeline = make_pipeline(cfg, roles, task, max_staleness, version)
    steps = []
    with closing(pipeline):
        for step in range(1, cfg.train.steps + 1):
            s = settings(cfg, roles, step, prefetch=step < cfg.train.steps)
            metrics, trajectories = train_step(roles, s, pipeline, step, version)
            version = metrics["policy_version"]
            steps.append({**{key: metrics[key] for key in KEYS if key in metrics}, **_tokens(trajectories)})
        pipeline.catch_up(version)
    return steps, version


def mode_summary(steps: list[dict], max_staleness: int, params: int, ppo_epochs: int) -> dict:
    """Rates and shares of one mode over its counted steps (back to back, so their step times add up to the
    wall time). Learner FLOPs: 2 N per real token for the old log-probs, 6 N per token and PPO epoch for the
    update (forward and backward), N the parameter count; attention is negligible at these lengths."""
    wall = sum(s["timing/step_s"] for s in steps)
    total = {key: sum(s.get(key, 0.0) for s in steps) for key in ("samples", "response_tokens", "sequence_tokens")}
    train_s = sum(s["timing/train_s"] for s in steps)
    out = {
        "max_staleness": max_staleness,
        "samples_per_s": total["samples"] / wall,
        "tokens_per_s": total["response_tokens"] / wall,
        "step_s": wall / len(steps),
        **{f"share/{name}": sum(s.get(key, 0.0) for s in steps) / wall for name, key in SHARES.items()},
        "generator/in_loop_tok_s": total["response_tokens"] / sum(s["timing/generate_s"] for s in steps),
        "learner/gflops": (2 + 6 * ppo_epochs) * params * total["sequence_tokens"] / train_s / 1e9,
        "learner/padding": 1 - total["sequence_tokens"] / sum(s["padded_tokens"] for s in steps),
        "median": {key: statistics.median(s[key] for s in steps) for key in KEYS if all(key in s for s in steps)},
        "per_step": steps,
    }
    out["share/driver"] = 1 - out["share/wait"] - out["share/train"] - out["share/sync"]  # collate, advantages, Ray
    return out


def summarise(result: dict) -> None:
    """The headline keys: the sync / async ratio and the in-loop generator rate (sync mode's, where generation
    has the machine to itself)."""
    modes = result["modes"]
    base = modes.get("sync") or next(iter(modes.values()))
    result["generator/in_loop_tok_s"] = base["generator/in_loop_tok_s"]
    result["generator/in_loop_share_of_standalone"] = (
        base["generator/in_loop_tok_s"] / result["generator/standalone_tok_s"]
    )
    result["learner/gflops"] = base["learner/gflops"]
    if "sync" in modes and "async" in modes:
        result["async_speedup"] = modes["async"]["samples_per_s"] / modes["sync"]["samples_per_s"]
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def gemm_gflops(n: int = 512, seconds: float = 1.0) -> float:
    """A float32 n x n matmul's GFLOP/s on this process's threads (one, as every actor here)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def _tokens(trajectories) -> dict:
    longest = max(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    return {
        "samples": len(trajectories),
        "response_tokens": sum(len(t.response_ids) for t in trajectories),
        "sequence_tokens": sum(len(t.prompt_ids) + len(t.response_ids) for t in trajectories),
        "padded_tokens": len(trajectories) * longest,  # the learner's batch is padded to its longest row
    }
