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
        p.add_argument("config", help="experiment YAML file (see configs/)")
        p.add_argument("overrides", nargs="*", help="dotlist overrides, key=value")
        if name == "config":
            p.add_argument("--explain", action="store_true", help="print every field with its doc")
        if name == "prm-study":
            p.add_argument("--out", default=None, help="report path without suffix (default run_dir/prm_study)")
        if name == "bench":
            p.add_argument("--out", default=None, help="JSON output path (default run_dir/bench.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [_alias(o) for o in args.overrides]
    try:
        # `steprl config` validates a recipe anywhere: the files it names live where it will run.
        cfg = load_config(
            args.config,
            overrides,
            check_files=args.command != "config",
            check_reward_models=COMMANDS[args.command].reward_worker,
        )
        module, func = COMMANDS[args.command].module, COMMANDS[args.command].func
        summary = getattr(importlib.import_module(module), func)(cfg, args)
    except ConfigError as e:  # from validation, or found when the command starts (a missing model dir)
        print(f"steprl {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _is_role_failure(e):
            raise
        from orchestrator.rundir import logs_dir

        print(
            f"steprl {args.command}: {type(e).__name__}: {e}\nactor logs: {logs_dir(cfg.run_dir)}; "
            "continue from the newest checkpoint with resume=true",
            file=sys.stderr,
        )
        return 1
    if summary:
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
