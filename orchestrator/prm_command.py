"""`steprl train-prm CONFIG`: train a PRM on step-labelled JSONL with DeepSpeed, then judge it on held-out data.

With no prm.train_file the config's labels are made first (steprl label, label.kinds[0]). The PRM is trained by
a PrmTrainer actor (workers/prm_trainer.py) and written to run_dir/prm as an HF directory. It is judged on
oracle-labelled held-out solutions the way the literature judges PRMs: step AUC against the held-out labels
(and, for arithmetic, against every oracle meaning), and ProcessBench first-error F1 (Zheng et al. 2412.06559:
the harmonic mean of the accuracy on flawed solutions, the earliest wrong step found, and on correct ones,
no step flagged below prm.threshold).
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

import ray
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.rundir import open_run_dir, write_summary
from orchestrator.validate import ConfigError

console = Console()
CHUNK = 10  # optimizer steps per call to the trainer (the progress bar's grain)


def run_train_prm_command(cfg: DictConfig, args=None) -> dict:
    from orchestrator.label_command import labels_dir, write_labels

    t0 = time.time()
    run_dir = open_run_dir(cfg)
    summary: dict = {}
    train_file, heldout_file = cfg.prm.train_file, cfg.prm.heldout_file
    if train_file is None:
        console.print(f"[bold]steprl train-prm[/]: no prm.train_file, labelling first ({cfg.label.kinds[0]}) ...")
        summary.update(write_labels(cfg, run_dir))
        train_file = summary[f"label/{cfg.label.kinds[0]}/file"]
    if heldout_file is None:
        heldout_file = os.path.join(labels_dir(run_dir), "heldout.jsonl")
        if not os.path.isfile(heldout_file):
            raise ConfigError(f"prm.heldout_file: null, and no {heldout_file} (run steprl label, or name a file)")
    prm_dir = os.path.join(run_dir, "prm")
    summary.update(fit_and_validate(cfg, read_labelled(train_file), prm_dir, run_dir))
    summary.update({"prm/dir": os.path.abspath(prm_dir), "prm/train_file": os.path.abspath(train_file)})
    summary.update(judge_prm(cfg, prm_dir, read_labelled(heldout_file)))
    summary["time_s"] = time.time() - t0
    write_summary(run_dir, summary)
    _print(summary)
    return summary


def read_labelled(path: str) -> list:
    """Step-labelled rows whose labels are probabilities (a PRM800K -1/0/+1 file must be mapped first)."""
    from tasks.datasets import read_step_jsonl

    examples, _ = read_step_jsonl(path)
    for i, ex in enumerate(examples):
        bad = [x for x in ex.labels if not 0.0 <= x <= 1.0]
        if bad:
            raise ConfigError(f"{path}: row {i + 1}: labels must be in [0, 1] for PRM training, got {bad[:3]}")
    if not examples:
        raise ConfigError(f"{path}: no labelled rows")
    return examples


def fit_and_validate(cfg: DictConfig, examples: list, out_dir: str, run_dir: str) -> dict:
    """Train on all but a seeded prm.val_fraction of the labelled rows; on those, the PRM's fit to its own kind
    of labels: `prm/val_loss` (cross-entropy) and `prm/val_auc`. Choose training settings with these, never
    with the held-out judgement."""
    from algo.prm_metrics import step_auc

    order = list(range(len(examples)))
    random.Random(cfg.seed).shuffle(order)
    n_val = int(len(examples) * cfg.prm.val_fraction)
    val, train = [examples[i] for i in order[:n_val]], [examples[i] for i in order[n_val:]]
    train_prm(cfg, train, out_dir, run_dir)
    out: dict[str, float] = {"prm/train_rows": len(train), "prm/val_rows": len(val)}
    if val:
        scores = _load(cfg, out_dir).score([(ex.prompt, ex.steps) for ex in val])
        pairs = [(s, y) for row, ex in zip(scores, val, strict=True) for s, y in zip(row, ex.labels, strict=True)]
        eps = 1e-6
        out["prm/val_loss"] = -sum(
            y * math.log(max(s, eps)) + (1 - y) * math.log(max(1 - s, eps)) for s, y in pairs
        ) / len(pairs)
        out["prm/val_auc"] = step_auc([s for s, _ in pairs], [y > 0.5 for _, y in pairs])
    return out


def _load(cfg: DictConfig, prm_dir: str, fmt: str = "token_classification"):
    from orchestrator.stepwise import load_prm

    return load_prm(
        prm_dir,
        fmt,
        delimiter=cfg.rollout.step_delimiter,
        dtype=cfg.model.dtype,
        device=None,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def train_prm(cfg: DictConfig, examples: list, out_dir: str, run_dir: str) -> str:
    """Train on `examples` (epochs x shuffled batches, seeded) in a PrmTrainer actor; returns out_dir."""
    from engine.build import TrainSettings
    from orchestrator.rundir import logs_dir
    from orchestrator.runtime import init_ray, ray_get
    from workers.prm_trainer import PrmTrainer

    p, timeout = cfg.prm, cfg.train.timeout_s
    per_epoch = math.ceil(len(examples) / p.batch_size)
    total = p.epochs * per_epoch
    rng = random.Random(cfg.seed)
    batches = []
    for _ in range(p.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        batches += [order[k : k + p.batch_size] for k in range(0, len(order), p.batch_size)]
    train = TrainSettings(
        lr=p.lr,
        weight_decay=0.0,
        warmup_steps=p.warmup_steps,
        total_steps=total,
        schedule="cosine",
        grad_clip=1.0,
        zero_stage=0,
        micro_batch_size=p.batch_size,
        epochs=1,
        mini_batches=1,
        bf16=cfg.model.dtype == "bfloat16",
    )
    started = not ray.is_initialized()
    init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.threads_per_actor)
    res = cfg.cluster.roles.learner
    trainer: Any = (  # a Ray actor handle
        ray.remote(PrmTrainer)
        .options(num_cpus=res.num_cpus, num_gpus=res.num_gpus)
        .remote(
            base_dir=p.base or cfg.model.policy,
            train=train,
            separator=cfg.rollout.step_delimiter,
            backend=cfg.learner.backend,
            seed=cfg.seed,
            threads=cfg.cluster.threads_per_actor,
            trust_remote_code=cfg.model.trust_remote_code,
            log_file=os.path.join(logs_dir(run_dir), "prm_trainer.log"),
        )
    )
    try:
        rows = [(ex.prompt, ex.steps, ex.labels) for ex in examples]
        ray_get(trainer.set_examples.remote(rows), "prm_trainer", "set_examples", timeout)
        bar_cols = (TextColumn("[bold]PRM"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*bar_cols, TextColumn("{task.fields[info]}"), console=console) as progress:
            bar = progress.add_task("prm", total=total, info="")
            for k in range(0, total, CHUNK):
                stats = ray_get(trainer.train_batches.remote(batches[k : k + CHUNK]), "prm_trainer", "train", timeout)
                loss = sum(s["loss"] for s in stats) / len(stats)
                progress.update(bar, advance=len(stats), info=f"loss {loss:.4f}")
        ray_get(trainer.save.remote(out_dir), "prm_trainer", "save", timeout)
    finally:
        ray.kill(trainer)
        if started:
            ray.shutdown()
    return out_dir


def judge_prm(cfg: DictConfig, prm_dir: str, heldout: list, fmt: str = "token_classification") -> dict:
    """Step AUC and first-error F1 of the PRM at prm_dir on held-out labelled solutions."""
    from algo.prm_metrics import first_error_f1, predicted_first_error, step_auc

    scores = _load(cfg, prm_dir, fmt).score([(ex.prompt, ex.steps) for ex in heldout])
    flat = [s for row in scores for s in row]
    out = {
        "prm/step_auc": step_auc(flat, [x > 0.5 for ex in heldout for x in ex.labels]),
        "prm/heldout_solutions": len(heldout),
        "prm/heldout_steps": len(flat),
    }
    # First errors (and, for arithmetic, every meaning) from the oracle, whatever meaning the file holds.
    truth = {"labels": [ex.labels for ex in heldout]}
    if cfg.task.kind == "arithmetic":
        truth = _oracle_truth(heldout, cfg.task.modulus, cfg.rollout.step_delimiter)
        for meaning, rows in truth.items():
            out[f"prm/step_auc_{meaning}"] = step_auc(flat, [x > 0.5 for row in rows for x in row])
    gold_rows = truth.get("step_correct", truth.get("labels", []))
    gold = [predicted_first_error(row, 0.5) for row in gold_rows]
    f1 = first_error_f1(scores, gold, threshold=cfg.prm.threshold)
    out.update({f"prm/first_error_{k}": v for k, v in f1.items() if k != "f1"})
    out["prm/first_error_f1"] = f1["f1"]
    return out


def relabel(examples: list, meaning: str, modulus: int, delimiter: str = "\n") -> list:
    """The same arithmetic solutions with the oracle's labels of `meaning` (questions are the chain prompts).

    A row does not record whether its last step was cut off (no delimiter before EOS or the length limit):
    every step is taken as terminated, so such a step, wrong as written, is judged as if it were finished.
    The tiny policy ends its lines almost always; labels written by steprl label saw the real text."""
    from algo.search import Node
    from orchestrator.labelling import oracle_values
    from tasks.arithmetic import problem_from_prompt
    from tasks.datasets import StepExample

    problems = [problem_from_prompt(ex.prompt, modulus) for ex in examples]
    solutions = [Node(i, tuple(s + delimiter for s in ex.steps), True) for i, ex in enumerate(examples)]
    values = oracle_values(problems, solutions, meaning)
    return [StepExample(ex.prompt, list(ex.steps), v) for ex, v in zip(examples, values, strict=True)]


def _oracle_truth(heldout: list, modulus: int, delimiter: str) -> dict[str, list[list[float]]]:
    from tasks.oracle import STEP_MEANINGS

    return {m: [ex.labels for ex in relabel(heldout, m, modulus, delimiter)] for m in STEP_MEANINGS}


def _print(summary: dict) -> None:
    from rich.table import Table

    table = Table(title="steprl train-prm: held-out judgement")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        if k.startswith("prm/") and not k.endswith(("dir", "file")):
            table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(table)
