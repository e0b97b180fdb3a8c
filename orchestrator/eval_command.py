"""`steprl eval CONFIG [policy=DIR]`: held-out metrics of the config's policy (or any policy directory)."""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig

from orchestrator.data import eval_problems, task_from_config
from orchestrator.rundir import open_run_dir, write_summary


def run_eval_command(cfg: DictConfig, args=None) -> dict:
    from orchestrator.evaluate import evaluate_policy, print_eval_table

    if not os.path.isfile(os.path.join(cfg.model.policy, "config.json")):
        raise SystemExit(f"model.policy: no model directory at {cfg.model.policy!r} (run steprl sft first)")
    t0 = time.time()
    run_dir = open_run_dir(cfg)
    task = task_from_config(cfg)
    metrics = evaluate_policy(
        cfg.model.policy,
        eval_problems(cfg, task),
        k=cfg.eval.k,
        temperature=cfg.eval.temperature,
        max_new_tokens=cfg.rollout.max_new_tokens,
        seed=cfg.seed,
        prompt_fn=task.prompt_text,  # the prompts training used (task.chat_template included)
    )
    metrics.update({"policy": os.path.abspath(cfg.model.policy), "time_s": time.time() - t0})
    print_eval_table(metrics, title=f"steprl eval: {cfg.model.policy}")
    write_summary(run_dir, metrics)
    return metrics
