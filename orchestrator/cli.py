"""`steprl <command> CONFIG [key=value ...]`: every command validates its config first, then runs.

Commands are a registry of lazily imported functions, so `steprl --help` and config errors stay fast (no
torch / Ray import before the config is known to be good).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple

from orchestrator.validate import ConfigError, explain, load_config


class Command(NamedTuple):
    module: str
    func: str  # takes (cfg, args) and returns a summary dict
    help: str
    # Builds a reward worker, so the reward sources' model directories must exist. Other commands accept a
    # config whose PRM does not exist yet (the PRM pipeline's config names the PRM its own train-prm writes).
    reward_worker: bool = False
    # CONFIG is an experiment file (configs/experiments/) that the command reads and checks itself, making
    # many run configs from it; func then takes (path, args) instead of one config validated here.
    experiment: bool = False


COMMANDS: dict[str, Command] = {
    "train": Command(
        "orchestrator.train",
        "run_train",
        "step-level RL (PPO / GRPO) on Ray: vLLM generators, reward / critic / reference actors, DeepSpeed learners",
        reward_worker=True,
    ),
    "sft": Command(
        "orchestrator.sft_command",
        "run_sft_command",
        "supervised fine-tuning of the tiny policy on generated correct solutions",
    ),
    "eval": Command(
        "orchestrator.eval_command",
        "run_eval_command",
        "held-out accuracy, pass@k, step accuracy and first-error histogram of a policy",
    ),
    "bench": Command(
        "orchestrator.bench",
        "run_bench",
        "time generation, scoring, learner step and weight sync over train.steps real steps; writes JSON",
        reward_worker=True,
    ),
    "label": Command(
        "orchestrator.label_command",
        "run_label_command",
        "step-labelled JSONL from policy samples: oracle, Monte-Carlo (hard / soft), prover values, corrupted gold",
    ),
    "train-prm": Command(
        "orchestrator.prm_command",
        "run_train_prm_command",
        "train a process reward model with DeepSpeed on step labels (labels first if none are named); judge it",
    ),
    "search": Command(
        "orchestrator.search_command",
        "run_search_command",
        "test-time search with a PRM on held-out problems: votes, best-of-N, beam, MCTS, rejection sampling",
    ),
    "prm-study": Command(
        "orchestrator.prm_study",
        "run_prm_study",
        "the PRM report: every label kind against the oracle, a PRM per kind and meaning, search with the best one",
    ),
    "sweep": Command(
        "orchestrator.sweep",
        "run_sweep_command",
        "a grid of train runs from an experiment file (settings x grid x seeds), resumable; writes the learning report",
        experiment=True,
    ),
    "config": Command(
        "orchestrator.cli",
        "show_config",
        "validate a config and print it resolved (--explain: every field with its doc)",
    ),
}


def show_config(cfg, args) -> dict:
    from omegaconf import OmegaConf

    if args.explain:
        print("\n".join(explain()))
    else:
        print(OmegaConf.to_yaml(cfg), end="")
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steprl",
        description="Step-level RL for reasoning language models on Ray.",
        epilog="Every command: steprl <command> CONFIG [key=value ...], e.g. "
        "steprl train configs/demo_cpu.yaml algo.estimator=grpo_process",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, command in COMMANDS.items():
        help_text = command.help
        p = sub.add_parser(name, help=help_text, description=help_text)
        where = "configs/experiments/: a sweep" if command.experiment else "configs/"
        p.add_argument("config", help=f"experiment YAML file (see {where})")
        p.add_argument("overrides", nargs="*", help="dotlist overrides, key=value")
        if name == "config":
            p.add_argument("--explain", action="store_true", help="print every field with its doc")
        if name == "prm-study":
            p.add_argument("--out", default=None, help="report path without suffix (default run_dir/prm_study)")
        if name == "sweep":
            p.add_argument("--out", default=None, help="report directory (default docs/results)")
            p.add_argument("--dry-run", action="store_true", help="print the cells and their status, then exit")
        if name == "bench":
            p.add_argument("--out", default=None, help="JSON output path (default run_dir/bench.json)")
            p.add_argument(
                "--modes",
                default="sync",
                help="comma-separated: sync (train.max_staleness=0), async (the config's max_staleness, at least 1)",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [_alias(o) for o in args.overrides]
    command = COMMANDS[args.command]
    cfg = None  # stays None for an experiment command: it makes and validates its run configs itself
    try:
        if not command.experiment:
            # `steprl config` validates a recipe anywhere: the files it names live where it will run.
            cfg = load_config(
                args.config,
                overrides,
                check_files=args.command != "config",
                check_reward_models=command.reward_worker,
            )
        # imported once the config is known to be good: a bad one fails before torch / Ray are imported
        run = getattr(importlib.import_module(command.module), command.func)
        summary = run(args.config if cfg is None else cfg, args)
    except ConfigError as e:  # from validation, or found when the command starts (a missing model dir)
        print(f"steprl {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _is_role_failure(e):
            raise
        from orchestrator.rundir import logs_dir

        if cfg is None:  # an experiment command names the failed run itself
            print(
                f"steprl {args.command}: {type(e).__name__}: {e}\nrun the same command again to resume", file=sys.stderr
            )
            return 1
        print(
            f"steprl {args.command}: {type(e).__name__}: {e}\nactor logs: {logs_dir(cfg.run_dir)}; "
            "continue from the newest checkpoint with resume=true",
            file=sys.stderr,
        )
        return 1
    if summary and cfg is not None:
        print(f"summary: {os.path.join(cfg.run_dir, 'summary.json')}")
    return 0


def _is_role_failure(e: Exception) -> bool:
    """A role died, failed or timed out: a clear one-paragraph error, not a traceback of the driver."""
    from learner.group import LearnerError
    from orchestrator.runtime import RoleError

    return isinstance(e, (RoleError, LearnerError))


# Short forms: `policy=DIR` (steprl eval CONFIG policy=DIR) and `prm=DIR` (steprl search CONFIG prm=DIR).
ALIASES = {"policy=": "model.policy=", "prm=": "prm.path="}


def _alias(override: str) -> str:
    for short, full in ALIASES.items():
        if override.startswith(short):
            return full + override[len(short) :]
    return override


if __name__ == "__main__":
    sys.exit(main())
