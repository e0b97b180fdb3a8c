"""`steprl prm-study CONFIG [--out docs/results/prm]`: the PRM report, made by one command.

1. Labels: every kind of LABEL_KINDS on the same policy samples (steprl label), each compared with the oracle.
2. PRMs: one per automatic kind (mc_hard, mc_soft, prover) and one per oracle meaning for the kinds that carry
   one (oracle, corrupt), all trained with the same settings (prm.*) and judged on the same held-out
   oracle-labelled solutions: step AUC (against each oracle meaning) and first-error F1.
3. Search: every method of search.methods at every budget with the PRM chosen on that held-out set: the
   automatic kind (no oracle in its labels) with the best first-error F1. Search problems are eval-split
   problems the choice never saw.

Writes <out>.json (every number) and <out>.md (the three tables, with the command and seed).
"""

from __future__ import annotations

import json
import math
import os
import time

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from orchestrator.rundir import atomic_write_text, jsonable, kept_notes, open_run_dir, write_summary

console = Console()
AUTOMATIC = ("mc_hard", "mc_soft", "prover")  # labels made without the oracle
WITH_MEANING = ("oracle", "corrupt")  # labels that carry an oracle meaning


def run_prm_study(cfg: DictConfig, args=None) -> dict:
    from orchestrator.config import LABEL_KINDS
    from orchestrator.label_command import print_label_table, write_labels
    from orchestrator.prm_command import fit_and_validate, judge_prm, read_labelled
    from tasks.oracle import STEP_MEANINGS

    if cfg.task.kind != "arithmetic":
        raise SystemExit("steprl prm-study compares labels with the arithmetic oracle: task.kind=arithmetic")
    t0 = time.time()
    run_dir = open_run_dir(cfg)
    labelling = _with(cfg, {"label": {"kinds": list(LABEL_KINDS), "meaning": "step_correct"}})
    labels = write_labels(labelling, run_dir)
    print_label_table(labels, LABEL_KINDS)
    heldout = read_labelled(labels["label/heldout/file"])

    prms: dict[str, dict] = {}
    for name, path in _prm_training_files(labels, run_dir, STEP_MEANINGS, cfg.task.modulus):
        console.print(f"[bold]PRM {name}[/] on {path}")
        prm_dir = os.path.join(run_dir, "prms", name)
        fit = fit_and_validate(cfg, read_labelled(path), prm_dir, run_dir)
        prms[name] = {"dir": prm_dir, "file": path, **fit, **judge_prm(cfg, prm_dir, heldout)}
    chosen = max((n for n in prms if n in AUTOMATIC), key=lambda n: _or_minus_inf(prms[n]["prm/first_error_f1"]))
    console.print(f"search with the PRM of [bold]{chosen}[/] (best held-out first-error F1 of the automatic kinds)")
    search = _search(cfg, prms[chosen]["dir"], os.path.join(run_dir, "search"))

    report = {
        "command": f"steprl prm-study {getattr(args, 'config', 'CONFIG')} " + " ".join(getattr(args, "overrides", [])),
        "seed": cfg.seed,
        "labels": {k: v for k, v in labels.items() if not k.endswith("/file")},
        "prms": {n: {k: v for k, v in p.items() if k not in ("dir", "file")} for n, p in prms.items()},
        "search_prm": chosen,
        # Numbers only: no path of this machine goes into a report meant for docs/.
        "search": {
            k: v for k, v in search.items() if k.startswith("search/") and k not in ("search/plot", "search/prm")
        },
        "time_s": time.time() - t0,
    }
    out = getattr(args, "out", None) or os.path.join(run_dir, "prm_study")
    write_report(report, out, list(cfg.search.budgets))
    write_summary(run_dir, report)
    return report


def _or_minus_inf(x) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _prm_training_files(labels: dict, run_dir: str, meanings: tuple[str, ...], modulus: int) -> list[tuple[str, str]]:
    """(PRM name, labelled file): the automatic kinds as labelled; oracle and corrupt once per meaning."""
    from orchestrator.prm_command import read_labelled, relabel
    from tasks.datasets import write_step_jsonl

    files = [(kind, labels[f"label/{kind}/file"]) for kind in AUTOMATIC]
    for kind in WITH_MEANING:
        examples = read_labelled(labels[f"label/{kind}/file"])
        for meaning in meanings:
            path = os.path.join(run_dir, "labels", f"{kind}_{meaning}.jsonl")
            write_step_jsonl(path, relabel(examples, meaning, modulus))
            files.append((f"{kind}/{meaning}", path))
    return files


def _search(cfg: DictConfig, prm_dir: str, run_dir: str) -> dict:
    from orchestrator.search_command import run_search_command

    return run_search_command(_with(cfg, {"prm": {"path": prm_dir}, "run_dir": run_dir}))


def _with(cfg: DictConfig, changes: dict) -> DictConfig:
    """cfg with `changes` merged in (a new config; cfg itself is read-only)."""
    merged = OmegaConf.merge(cfg, changes)
    assert isinstance(merged, DictConfig)
    return merged


def write_report(report: dict, out: str, budgets: list[int]) -> None:
    """<out>.json and <out>.md: labels against the oracle, PRMs per kind and meaning, search by budget."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write_text(out + ".json", json.dumps(jsonable(report), indent=2, sort_keys=True) + "\n")
    atomic_write_text(out + ".md", render_markdown(report, budgets) + kept_notes(out + ".md", NOTES_HEADING))


NOTES_HEADING = "## What the numbers say"


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render_markdown(report: dict, budgets: list[int]) -> str:
    lab, prms, search = report["labels"], report["prms"], report["search"]
    lines = [
        "# Process reward models on the demo task: labels, PRMs, search",
        "",
        f"Made by `{report['command'].strip()}` (seed {report['seed']}, {report['time_s'] / 60:.0f} min on our "
        "2-core CPU machine). Every number below is in the JSON file next to this one.",
        "",
        "## 1. Label kinds against the oracle (same policy samples; corrupt makes its own)",
        "",
        "| kind | steps | mean label | AUC step_correct | AUC prefix_correct | AUC strict_step | first wrong step "
        "agrees | rollouts / step | s / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("oracle", "mc_hard", "mc_soft", "prover", "corrupt"):
        g = {k.split("/")[-1]: v for k, v in lab.items() if k.startswith(f"label/{kind}/")}
        lines.append(
            f"| {kind} | {g.get('steps', '-')} | {_f(g.get('mean_label'))} | {_f(g.get('auc_step_correct'))} | "
            f"{_f(g.get('auc_prefix_correct'))} | {_f(g.get('auc_strict_step'))} | "
            f"{_f(g.get('first_error_agreement'))} | {_f(g.get('rollouts_per_step'), 1)} | "
            f"{_f(g.get('seconds_per_step'), 4)} |"
        )
    lines += [
        "",
        "## 2. PRMs per label kind and meaning (held-out oracle-labelled policy samples)",
        "",
        "| PRM trained on | step AUC vs step_correct | vs prefix_correct | vs strict_step | first-error F1 | "
        "acc. flawed | acc. correct |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in prms.items():
        lines.append(
            f"| {name} | {_f(p.get('prm/step_auc_step_correct'))} | {_f(p.get('prm/step_auc_prefix_correct'))} | "
            f"{_f(p.get('prm/step_auc_strict_step'))} | {_f(p.get('prm/first_error_f1'))} | "
            f"{_f(p.get('prm/first_error_acc_flawed'))} | {_f(p.get('prm/first_error_acc_correct'))} |"
        )
    lines += [
        "",
        f"## 3. Search on held-out problems with the {report['search_prm']} PRM: accuracy (tokens per problem)",
        "",
        "| method | " + " | ".join(f"N={n}" for n in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    methods = sorted({k.removeprefix("search/").split("@")[0] for k in search if "@" in k}, key=_method_order)
    for m in methods:
        cells = []
        for n in budgets:
            acc, tok = search.get(f"search/{m}@{n}"), search.get(f"search/{m}@{n}/tokens")
            cells.append("-" if acc is None else f"{acc:.3f} ({tok:.0f})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _method_order(name: str) -> int:
    from orchestrator.config import SEARCH_METHODS

    return SEARCH_METHODS.index(name) if name in SEARCH_METHODS else len(SEARCH_METHODS)
