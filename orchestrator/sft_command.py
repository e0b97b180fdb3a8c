"""`steprl sft CONFIG`: supervised fine-tuning of the tiny policy on the task's gold solutions."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from orchestrator.data import task_from_config
from orchestrator.rundir import open_run_dir, write_summary


def sft_from_config(cfg: DictConfig, out_dir: str) -> dict:
    """Run SFT as the config says; returns run_sft's summary (policy_dir: <out_dir>/policy)."""
    from orchestrator.sft import run_sft

    if cfg.task.kind != "arithmetic":
        raise SystemExit(
            "steprl sft trains the tiny policy on generated chains (task.kind=arithmetic); "
            "for jsonl tasks point model.policy at a pretrained model directory"
        )
    m, s = cfg.model, cfg.sft
    summary = run_sft(
        out_dir=out_dir,
        task=task_from_config(cfg),
        hidden=m.hidden,
        layers=m.layers,
        heads=m.heads,
        kv_heads=m.kv_heads,
        batches=s.batches,
        batch_size=s.batch_size,
        lr=s.lr,
        warmup=s.warmup,
        seed=cfg.seed,
        threads=cfg.cluster.threads_per_actor,
    )
    summary["policy_dir"] = os.path.abspath(summary["policy_dir"])
    return summary


def run_sft_command(cfg: DictConfig, args=None) -> dict:
    import time

    t0 = time.time()
    run_dir = open_run_dir(cfg)
    sft = sft_from_config(cfg, run_dir)
    summary = {
        "policy_dir": sft["policy_dir"],
        "sft/batches": cfg.sft.batches,
        "sft/final_loss": sft["final_loss"],
        "time_s": time.time() - t0,
    }
    write_summary(run_dir, summary)
    return summary
