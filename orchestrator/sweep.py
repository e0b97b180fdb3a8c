"""`steprl sweep EXPERIMENT.yaml [key=value ...] [--out DIR] [--dry-run]`: a grid of train runs and its report.

The experiment file (configs/experiments/, read by orchestrator/experiment.py) names a base config, task
settings, a grid, seeds and a phase. Every cell (setting x grid label x seed) runs `steprl train` in this
process, one after another, in its own run_dir under the sweep directory; then its final policy is evaluated
on longer chains (`steprl eval` with the setting's length_generalisation overrides). Rerunning the command
resumes: a cell whose summary.json exists is not trained again, an interrupted one continues from its newest
checkpoint (resume=true), and a finished length-generalisation evaluation is kept. When every cell is done,
DIR/learning.json, DIR/learning.md and a plot per setting are written (orchestrator/sweep_report.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.experiment import Cell, expand, read_experiment
from orchestrator.rundir import atomic_write_text
from orchestrator.validate import ConfigError

console = Console()
RECORD = "cell.json"  # in each cell's run_dir: the base config and overrides that the run was made with
LENGTH_DIR = "length_generalisation"  # the cell's length-generalisation evaluation (steprl eval's run_dir)


class Runners(NamedTuple):
    """What a cell calls; tests pass fakes that write the files the real commands write."""

    train: Callable[[DictConfig], dict]  # orchestrator.train.run_train
    evaluate: Callable[[DictConfig], dict]  # orchestrator.eval_command.run_eval_command
    has_checkpoint: Callable[[str], bool]  # a run_dir holds a checkpoint to resume from


def real_runners() -> Runners:
    """The train and eval commands themselves (imported here: --dry-run and config errors stay torch-free)."""
    from orchestrator.checkpoint import latest_checkpoint
    from orchestrator.eval_command import run_eval_command
    from orchestrator.train import run_train

    return Runners(run_train, run_eval_command, lambda run_dir: latest_checkpoint(run_dir) is not None)


def run_sweep_command(path: str, args) -> dict:
    """The `steprl sweep` command: CONFIG is the experiment file, overrides apply to every cell."""
    overrides = list(getattr(args, "overrides", None) or [])
    out = getattr(args, "out", None) or os.path.join("docs", "results")
    command = " ".join(["steprl sweep", path, *overrides, "--out", out])
    return run_sweep(path, overrides, out, command, dry_run=bool(getattr(args, "dry_run", False)))


def run_sweep(
    path: str, overrides: list[str], out: str, command: str, dry_run: bool = False, runners: Runners | None = None
) -> dict:
    """Plan every cell (configs validated, earlier cells checked), run those not done, write the report."""
    from orchestrator.sweep_report import build_report, write_report

    exp = read_experiment(path)
    cells = expand(exp, overrides)
    for cell in cells:
        check_record(cell, exp.base)
    print_plan(cells, exp.phase, exp.sweep_dir)
    if dry_run:
        return {}
    run_cells(cells, exp.base, runners or real_runners())
    report = build_report(exp, cells, command)
    write_report(report, out)
    console.print(f"[bold]learning report[/]: {os.path.join(out, 'learning.md')}")
    return report


def status(cell: Cell) -> str:
    """done | evaluate (trained, length generalisation not yet) | resume (started) | new."""
    if os.path.isfile(os.path.join(cell.run_dir, "summary.json")):
        return "evaluate" if cell.eval_cfg is not None and not _evaluated(cell) else "done"
    return "resume" if os.path.isdir(cell.run_dir) else "new"


def _evaluated(cell: Cell) -> bool:
    return os.path.isfile(os.path.join(cell.run_dir, LENGTH_DIR, "summary.json"))


def _record(cell: Cell, base: str) -> dict:
    return {"base": base, "overrides": list(cell.overrides)}


def check_record(cell: Cell, base: str) -> None:
    """A cell's run_dir made with other settings is an error: resuming it, or taking its summary.json as this
    cell's result, would report one run as another."""
    path = os.path.join(cell.run_dir, RECORD)
    if not os.path.isfile(path):
        return
    with open(path) as fh:
        found = json.load(fh)
    if found != _record(cell, base):
        raise ConfigError(
            f"{cell.run_dir}: holds a run made with other settings ({path}: {found}); remove that directory, "
            "or give the experiment another sweep_dir"
        )


def print_plan(cells: list[Cell], phase: str, sweep_dir: str) -> None:
    """One row per setting and grid label: each seed's status (its run_dir: sweep_dir/setting/label/seed<k>)."""
    table = Table(title=f"steprl sweep: {len(cells)} cells, {phase} phase, run_dirs under {sweep_dir}")
    table.add_column("setting")
    table.add_column("grid label", overflow="fold")
    table.add_column("seed: status", overflow="fold")
    rows: dict[tuple[str, str], list[str]] = {}
    for cell in cells:
        rows.setdefault((cell.setting, cell.label), []).append(f"{cell.seed}: {status(cell)}")
    for (setting, label), states in rows.items():
        table.add_row(setting, label, ", ".join(states))
    console.print(table)


def run_cells(cells: list[Cell], base: str, runners: Runners) -> None:
    progress = Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    with progress:
        bar = progress.add_task("sweep", total=len(cells), info="")
        for cell in cells:
            progress.update(bar, info=f"{cell.setting}  {cell.label}  seed {cell.seed}")
            progress.stop()  # the train command shows its own bar: one live display on the terminal at a time
            try:
                run_cell(cell, base, runners)
            except Exception:
                console.print(f"[red]cell failed[/]: {cell.run_dir}; run the same steprl sweep again to resume it")
                raise
            progress.start()
            progress.advance(bar)


def run_cell(cell: Cell, base: str, runners: Runners) -> None:
    """Train unless summary.json exists (resuming from a checkpoint if there is one), then evaluate the final
    policy on longer chains unless that evaluation exists."""
    os.makedirs(cell.run_dir, exist_ok=True)
    atomic_write_text(os.path.join(cell.run_dir, RECORD), json.dumps(_record(cell, base), indent=2) + "\n")
    if not os.path.isfile(os.path.join(cell.run_dir, "summary.json")):
        cfg = OmegaConf.merge(cell.train_cfg, {"resume": runners.has_checkpoint(cell.run_dir)})
        assert isinstance(cfg, DictConfig)
        runners.train(cfg)
    if cell.eval_cfg is not None and not _evaluated(cell):
        runners.evaluate(cell.eval_cfg)
