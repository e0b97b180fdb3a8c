"""`steprl search CONFIG prm=DIR`: test-time search on held-out problems, through the generator actors.

Every method of search.methods at every budget of search.budgets (orchestrator/searching.py) on the first
search.num_problems problems of the held-out set; the summary holds `search/<method>@<N>` (accuracy of the
chosen solutions) and `search/<method>@<N>/tokens` (tokens generated per problem), and search.png plots
accuracy against N and against tokens.
"""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.rundir import open_run_dir, write_summary
from orchestrator.validate import ConfigError

console = Console()


def run_search_command(cfg: DictConfig, args=None) -> dict:
    from algo.search import Node
    from orchestrator.data import eval_problems, prompt_requests, task_from_config
    from orchestrator.roles import generator_session
    from orchestrator.searching import METHODS, SearchRun, budgets_of
    from orchestrator.stepwise import Judge, PrmScorer, load_prm, progress_expander

    if not cfg.prm.path:
        raise ConfigError("prm.path: steprl search needs a PRM directory (prm=DIR, e.g. the run_dir/prm of train-prm)")
    t0 = time.time()
    run_dir = open_run_dir(cfg)
    task, s = task_from_config(cfg), cfg.search
    problems = eval_problems(cfg, task, s.num_problems)
    requests = prompt_requests(task, problems)
    prm = load_prm(
        cfg.prm.path,
        cfg.prm.format,
        delimiter=cfg.rollout.step_delimiter,
        dtype=cfg.model.dtype,
        device=None,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    delimiter = cfg.rollout.step_delimiter
    summary: dict = {"search/problems": len(problems), "search/prm": os.path.abspath(cfg.prm.path)}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with generator_session(cfg, cfg.model.policy, run_dir) as pool, Progress(*columns, console=console) as progress:
        bar = progress.add_task("search", total=None)

        run = SearchRun(
            roots=[Node(i, (), False) for i in range(len(problems))],
            judge=Judge(problems),
            scorer=PrmScorer(prm, [task.question_text(p) for p in problems], delimiter),
            make_expander=lambda temperature: progress_expander(cfg, pool, requests, temperature, progress, bar),
            temperature=s.temperature,
            aggregation=s.aggregation,
            expansions=s.expansions,
            mcts_children=s.mcts_children,
            c_uct=s.c_uct,
            threshold=cfg.prm.threshold,
            max_depth=s.max_depth,
            max_budget=max(s.budgets),
        )
        for method in s.methods:
            for n in budgets_of(method, list(s.budgets)):
                progress.update(bar, description=f"{method}@{n}")
                chosen, tokens = METHODS[method](run, n)
                summary[f"search/{method}@{n}"] = sum(map(run.judge.correct, chosen)) / len(chosen)
                summary[f"search/{method}@{n}/tokens"] = sum(tokens) / len(tokens)
    summary["search/plot"] = plot_search(summary, os.path.join(run_dir, "search.png"))
    summary["time_s"] = time.time() - t0
    write_summary(run_dir, summary)
    print_search_table(summary)
    return summary


def _curves(summary: dict) -> dict[str, list[tuple[int, float, float]]]:
    """method -> [(N, accuracy, tokens)] from the summary keys."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for key, acc in summary.items():
        if key.startswith("search/") and "@" in key and not key.endswith("/tokens"):
            method, n = key.removeprefix("search/").split("@")
            out.setdefault(method, []).append((int(n), acc, summary[key + "/tokens"]))
    return {m: sorted(v) for m, v in out.items()}


def plot_search(summary: dict, path: str) -> str | None:
    """Accuracy against N and against tokens per problem, one line per method (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (by_n, by_tokens) = plt.subplots(1, 2, figsize=(11, 4))
    for method, points in _curves(summary).items():
        ns, accs, toks = zip(*points, strict=True)
        by_n.plot(ns, accs, marker="o", label=method)
        by_tokens.plot(toks, accs, marker="o", label=method)
    for ax, xlabel in (
        (by_n, "N (samples / width x expansions / simulations / tries)"),
        (by_tokens, "tokens per problem"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    by_n.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_search_table(summary: dict) -> None:
    from rich.table import Table

    curves = _curves(summary)
    budgets = sorted({n for points in curves.values() for n, _, _ in points})
    table = Table(title=f"steprl search: held-out accuracy (tokens per problem), {summary['search/problems']} problems")
    table.add_column("method")
    for n in budgets:
        table.add_column(f"N={n}", justify="right")
    for method, points in curves.items():
        cells = {n: f"{acc:.3f} ({tok:.0f})" for n, acc, tok in points}
        table.add_row(method, *(cells.get(n, "-") for n in budgets))
    console.print(table)
