"""The learning report of a sweep: learning.json, learning.md and learning_<setting>.png, from the cells' files.

Per setting and grid label, over seeds:
- samples_to_target: the mean, over the seeds that reached it, of the first `samples` (metrics.jsonl) at which
  eval/accuracy >= the setting's target; seeds_reached_target says how many did; null when none did. Accuracy is
  measured every train.eval_every steps, so the number is resolved to that grid, and a mean over the seeds
  that reached the target leaves out the slow ones: read it with seeds_reached_target.
- final_accuracy_mean / _std: the last eval/accuracy of each run (its final policy), mean and sample
  standard deviation over seeds (n - 1; null for one seed).
- length_generalisation_accuracy_mean / _std: greedy accuracy of each final policy on the setting's longer
  chains (run_dir/length_generalisation/summary.json).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

from orchestrator.experiment import Cell, Experiment
from orchestrator.rundir import atomic_write_text, jsonable, kept_notes

NOTES_HEADING = "## What the numbers say"  # a hand-written reading below it survives remaking the report


def read_rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics of this cell (was it trained?)")
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def eval_curve(rows: list[dict]) -> list[tuple[int, float]]:
    """(samples, eval/accuracy) of every row that carries an evaluation, in step order (step 0: the base)."""
    return [(int(r["samples"]), float(r["eval/accuracy"])) for r in rows if r.get("eval/accuracy") is not None]


def samples_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first sample count at which accuracy >= target; None if the run never got there."""
    return next((samples for samples, acc in curve if acc >= target), None)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); (None, None) without values, std None for one value."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def band(curves: list[list[tuple[int, float]]]) -> dict[str, list[float]]:
    """Mean, min and max over seeds at the sample counts every run evaluated at."""
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    at = [dict(c) for c in curves]
    points = [[a[s] for a in at] for s in common]
    return {
        "samples": [float(s) for s in common],
        "mean": [statistics.fmean(p) for p in points],
        "min": [min(p) for p in points],
        "max": [max(p) for p in points],
    }


def read_run(cell: Cell, target: float) -> dict[str, Any]:
    """One cell's numbers, from its metrics.jsonl and its length-generalisation summary."""
    curve = eval_curve(read_rows(cell.run_dir))
    if not curve:
        raise ValueError(f"{os.path.join(cell.run_dir, 'metrics.jsonl')}: no row carries eval/accuracy")
    lengen = None
    if cell.eval_cfg is not None:
        with open(os.path.join(cell.eval_cfg.run_dir, "summary.json")) as fh:
            lengen = json.load(fh)["eval/accuracy"]
    return {
        "seed": cell.seed,
        "run_dir": cell.run_dir,
        "final_accuracy": curve[-1][1],
        "samples_total": curve[-1][0],
        "samples_to_target": samples_to_target(curve, target),
        "length_generalisation_accuracy": lengen,
        "curve": [list(p) for p in curve],
    }


def aggregate(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The numbers of one setting and grid label over its seeds (see the module doc)."""
    reached = [r["samples_to_target"] for r in runs if r["samples_to_target"] is not None]
    final_mean, final_std = mean_std([r["final_accuracy"] for r in runs])
    lengths = [r["length_generalisation_accuracy"] for r in runs if r["length_generalisation_accuracy"] is not None]
    length_mean, length_std = mean_std(lengths)
    return {
        "target": target,
        "seeds": [r["seed"] for r in runs],
        "samples_to_target": statistics.fmean(reached) if reached else None,
        "seeds_reached_target": len(reached),
        "final_accuracy_mean": final_mean,
        "final_accuracy_std": final_std,
        "length_generalisation_accuracy_mean": length_mean,
        "length_generalisation_accuracy_std": length_std,
        "samples_total": max(r["samples_total"] for r in runs),
        "curve": band([[tuple(p) for p in r["curve"]] for r in runs]),
        "runs": runs,
    }


def build_report(exp: Experiment, cells: list[Cell], command: str) -> dict[str, Any]:
    """Every number of the sweep, by setting and grid label; each run with the train command that made it."""
    settings: dict[str, Any] = {}
    for name, setting in exp.settings.items():
        by_label: dict[str, list[dict]] = {}
        grid_values: dict[str, dict[str, Any]] = {}
        for cell in (c for c in cells if c.setting == name):
            run = read_run(cell, setting.target)
            run["train_command"] = " ".join(["steprl train", exp.base, *cell.overrides])
            by_label.setdefault(cell.label, []).append(run)
            grid_values[cell.label] = cell.grid_values
        settings[name] = {
            "target": setting.target,
            "overrides": setting.overrides,
            "length_generalisation": setting.length_generalisation,
            "plot": f"learning_{name}.png",
            "results": {
                label: {"grid": grid_values[label], **aggregate(runs, setting.target)}
                for label, runs in by_label.items()
            },
        }
    return {
        "command": command,
        "experiment": exp.path,
        "base": exp.base,
        "phase": exp.phase,
        "num_problems": exp.num_problems,
        "seeds": exp.seeds,
        "grid": exp.grid,
        "overrides": exp.overrides,
        "settings": settings,
    }


def write_report(report: dict[str, Any], out: str) -> None:
    """out/learning.json, out/learning.md (a hand-written reading under NOTES_HEADING is kept) and the plots."""
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "learning.json"), json.dumps(jsonable(report), indent=2) + "\n")
    for name, setting in report["settings"].items():
        plot_setting(setting, name, report["phase"], os.path.join(out, setting["plot"]))
    md = os.path.join(out, "learning.md")
    atomic_write_text(md, render_markdown(report) + kept_notes(md, NOTES_HEADING))


def varying_keys(labels: list[dict[str, Any]]) -> set[str]:
    """The grid keys that tell the labels apart: with more than one value, or absent from some labels."""
    keys = {k for values in labels for k in values}
    return {k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in labels}) > 1}


def legend_label(values: dict[str, Any], varying: set[str]) -> str:
    """A grid label's values of the varying keys, by their short names (e.g. "estimator=gae,
    meaning=strict_step"); all its values when nothing varies."""
    shown = {k: v for k, v in values.items() if k in varying} or values
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in shown.items())


def plot_setting(setting: dict[str, Any], name: str, phase: str, path: str) -> None:
    """Accuracy on the phase's split against samples: per grid label the mean over seeds, and a band from min
    to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = varying_keys([r["grid"] for r in setting["results"].values()])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for result in setting["results"].values():
        curve = result["curve"]
        (line,) = ax.plot(
            curve["samples"], curve["mean"], marker="o", markersize=3, label=legend_label(result["grid"], varying)
        )
        ax.fill_between(curve["samples"], curve["min"], curve["max"], color=line.get_color(), alpha=0.15)
    ax.axhline(setting["target"], color="grey", linestyle="--", linewidth=1, label=f"target {setting['target']:g}")
    seeds = max(len(r["seeds"]) for r in setting["results"].values())
    ax.set_title(f"{name}: {phase} accuracy against samples (mean, min-max band over {seeds} seeds)", fontsize=10)
    ax.set_xlabel("samples")
    ax.set_ylabel("greedy accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean_std(mean: float | None, std: float | None) -> str:
    return _f(mean) if std is None else f"{_f(mean)} ± {_f(std)}"


def _overrides_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none"


def render_markdown(report: dict[str, Any]) -> str:
    split = {"validation": "validation", "test": "held-out test"}[report["phase"]]
    lines = [
        f"# Learning study ({report['phase']} phase)",
        "",
        f"Made by `{report['command']}` from `{report['experiment']}` (base config `{report['base']}`). "
        f"Accuracy is greedy accuracy on {report['num_problems']} problems of the {split} split; every setting "
        f"and grid label ran with seeds {', '.join(map(str, report['seeds']))}. Every number below is in "
        "learning.json next to this file, with each run's own train command.",
        "",
        "Samples to target: the mean, over the seeds that reached it (k/n), of the first number of samples at "
        "which accuracy reached the target (measured every train.eval_every steps). Final and length "
        "generalisation: mean ± standard deviation over seeds.",
    ]
    for name, setting in report["settings"].items():
        lines += [
            "",
            f"## Setting `{name}` (target {setting['target']:g})",
            "",
            f"Overrides: {_overrides_text(setting['overrides'])}. "
            f"Length generalisation: {_overrides_text(setting['length_generalisation'])}.",
            "",
            "| grid label | samples to target (k/n) | final accuracy | length generalisation |",
            "|---|---|---|---|",
        ]
        for label, r in setting["results"].items():
            reached = f"({r['seeds_reached_target']}/{len(r['seeds'])})"
            samples = "-" if r["samples_to_target"] is None else f"{r['samples_to_target']:,.0f}"
            lines.append(
                f"| {label} | {samples} {reached} | {_mean_std(r['final_accuracy_mean'], r['final_accuracy_std'])} | "
                f"{_mean_std(r['length_generalisation_accuracy_mean'], r['length_generalisation_accuracy_std'])} |"
            )
        lines += ["", f"![{name}]({setting['plot']})"]
    return "\n".join(lines) + "\n"
