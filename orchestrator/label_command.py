"""`steprl label CONFIG`: step-labelled JSONL from the policy's own samples, made on the generator actors.

Writes run_dir/labels/<kind>.jsonl for every kind in label.kinds (orchestrator/labelling.py), run_dir/labels/
heldout.jsonl (oracle-labelled policy samples on eval-split problems, what PRMs are judged on) and a summary
comparing each kind with the oracle on the same samples: step AUC, first-wrong-step agreement and cost.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.rundir import open_run_dir, write_summary
from orchestrator.validate import ConfigError

console = Console()
# Fixed seeds of the problem sets, apart from the RL loop's per-step draws and from eval's set.
LABEL_SET_SEED, HELDOUT_SET_SEED = 777_777, 424_242


def labels_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "labels")


def run_label_command(cfg: DictConfig, args=None) -> dict:
    t0 = time.time()
    run_dir = open_run_dir(cfg)
    summary = write_labels(cfg, run_dir)
    summary["time_s"] = time.time() - t0
    write_summary(run_dir, summary)
    print_label_table(summary, cfg.label.kinds)
    return summary


def write_labels(cfg: DictConfig, run_dir: str) -> dict:
    """Label train-split samples with every kind of label.kinds and oracle-label held-out samples; returns the
    summary (paths of the files written, and the comparison with the oracle)."""
    from algo.search import Node, sample_to_end
    from orchestrator.data import prompt_requests, task_from_config
    from orchestrator.labelling import KINDS, LabelJob, compare_with_oracle, examples, oracle_values, step_rows
    from orchestrator.roles import generator_session
    from orchestrator.stepwise import Expander, Judge, progress_expander
    from tasks.datasets import write_step_jsonl
    from tasks.oracle import STEP_MEANINGS

    lab, arithmetic = cfg.label, cfg.task.kind == "arithmetic"
    needs_oracle = [k for k in lab.kinds if k in ("oracle", "corrupt")]
    if needs_oracle and not arithmetic:
        raise ConfigError(f"label.kinds: {needs_oracle} need the arithmetic oracle (task.kind=arithmetic)")
    task, out_dir = task_from_config(cfg), labels_dir(run_dir)
    summary: dict = {}
    with ExitStack() as stack, _progress() as progress:
        pool = stack.enter_context(generator_session(cfg, cfg.model.policy, run_dir))

        def expander(pool, problems, what: str) -> Expander:
            requests = prompt_requests(task, problems)
            return progress_expander(
                cfg, pool, requests, lab.temperature, progress, progress.add_task(what, total=None)
            )

        problems = task.sample(lab.num_problems, "train", seed=LABEL_SET_SEED + cfg.seed)
        policy = expander(pool, problems, "policy samples and completions")
        roots = [Node(i, (), False) for i in range(len(problems))]
        solutions = [s for row in sample_to_end(roots, lab.samples_per_problem, policy) for s in row]

        def prover() -> Expander:
            if lab.prover_policy in (None, cfg.model.policy):
                return policy
            prover_pool = stack.enter_context(generator_session(cfg, lab.prover_policy, run_dir))
            return expander(prover_pool, problems, "prover completions")

        job = LabelJob(
            problems,
            [task.question_text(p) for p in problems],
            solutions,
            policy,
            prover,
            Judge(problems),
            lab.meaning,
            lab.rollouts,
            lab.prover_k,
            lab.samples_per_problem,
            cfg.rollout.step_delimiter,
            cfg.seed,
        )
        for kind in lab.kinds:
            labelled = KINDS[kind](job)
            path = os.path.join(out_dir, f"{kind}.jsonl")
            write_step_jsonl(path, examples(job, labelled))
            summary[f"label/{kind}/file"] = os.path.abspath(path)
            summary.update(compare_with_oracle(job, kind, labelled, STEP_MEANINGS if arithmetic else ()))
        if arithmetic:
            held = task.sample(lab.heldout_problems, "eval", seed=HELDOUT_SET_SEED)
            held_expander = expander(pool, held, "held-out samples")
            held_roots = [Node(i, (), False) for i in range(len(held))]
            held_solutions = [
                s for row in sample_to_end(held_roots, lab.samples_per_problem, held_expander) for s in row
            ]
            values = oracle_values(held, held_solutions, lab.meaning)
            rows = step_rows([task.question_text(p) for p in held], held_solutions, values, job.delimiter)
            path = os.path.join(out_dir, "heldout.jsonl")
            write_step_jsonl(path, rows)
            summary["label/heldout/file"] = os.path.abspath(path)
            summary["label/heldout/solutions"] = len(rows)
    summary["label/solutions"] = len(solutions)
    summary["label/problems"] = len(problems)
    return summary


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def print_label_table(summary: dict, kinds) -> None:
    from rich.table import Table

    columns = ["steps", "mean_label", "auc_step_correct", "auc_prefix_correct", "auc_strict_step"]
    columns += ["first_error_agreement", "rollouts_per_step", "seconds_per_step"]
    table = Table(title="steprl label: each kind against the oracle, same samples")
    for c in ["kind", *columns]:
        table.add_column(c, justify="right")
    for kind in kinds:
        cells = [summary.get(f"label/{kind}/{c}") for c in columns]
        table.add_row(kind, *("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells))
    console.print(table)
