"""The experiment file of `steprl sweep` (configs/experiments/*.yaml): read, checked, expanded into cells.

A cell is one train run: a task setting x one combination of the grid x a seed, with its own run_dir under
the sweep directory. Every cell's config is the base config plus dotted overrides, in this order: the
experiment's `overrides`, the setting's `overrides`, the grid values, the command line's, then the keys the
sweep owns (seed, eval.split and eval.num_problems from the phase, run_dir). All configs are built and
validated here, before any cell runs: a bad value in cell 40 must not surface after 39 trainings.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from orchestrator.validate import ConfigError, load_config, read_yaml_mapping

# Top-level keys of an experiment file and what each holds (unknown keys are named with the closest one).
FIELDS = {
    "base": "run config every cell starts from (a path from where steprl runs, e.g. configs/demo_cpu.yaml)",
    "phase": "validation (choosing settings, eval.split=validation) | test (the reported numbers, eval.split=test)",
    "num_problems": "eval.num_problems of every cell (the test phase needs >= 1000)",
    "seeds": "list of seeds; every setting and grid combination runs once per seed",
    "settings": "task settings by name: {target, overrides, length_generalisation}",
    "grid": "dotted config key -> list of values, every combination one grid label; or a list of such grids "
    "(their labels together: e.g. outcome estimators without a step-reward meaning, process ones with each)",
    "overrides": "dotted config key -> value, applied to every cell (optional)",
    "sweep_dir": "where the cells' run_dirs go (optional; default runs/sweeps/<experiment file name>)",
}
SETTING_FIELDS = {
    "target": "eval accuracy a run must reach for samples_to_target (a number in (0, 1])",
    "overrides": "dotted config key -> value for this setting, e.g. task.min_steps (optional)",
    "length_generalisation": "dotted overrides of the evaluation of each final policy on longer chains (optional)",
}


@dataclass(frozen=True)
class Phase:
    split: str  # eval.split of every cell
    min_problems: int  # eval.num_problems at least: test numbers need a small standard error


PHASES = {"validation": Phase("validation", 1), "test": Phase("test", 1000)}
# Keys the sweep sets itself in every cell; an experiment or command line setting them is an error. The
# length-generalisation evaluation also owns model.policy: it evaluates the cell's final policy.
SWEEP_KEYS = ("seed", "run_dir", "resume", "eval.split", "eval.num_problems")
EVAL_KEYS = (*SWEEP_KEYS, "model.policy")
SETTING_NAME = re.compile(r"[A-Za-z0-9_-]+")  # it names directories and plot files
UNSAFE_IN_DIR = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclass(frozen=True)
class Setting:
    target: float
    overrides: dict[str, Any]
    length_generalisation: dict[str, Any]  # empty: no length-generalisation evaluation


@dataclass(frozen=True)
class Experiment:
    path: str
    base: str
    phase: str
    num_problems: int
    seeds: list[int]
    settings: dict[str, Setting]
    grid: list[dict[str, list[Any]]]  # one or more grids; the labels are those of all of them
    overrides: dict[str, Any]
    sweep_dir: str

    @property
    def grid_keys(self) -> set[str]:
        return {key for grid in self.grid for key in grid}


@dataclass(frozen=True)
class Cell:
    setting: str
    label: str  # the grid values, "algo.estimator=gae,reward.meaning=step_correct"
    grid_values: dict[str, Any]  # the same as key -> value
    seed: int
    run_dir: str
    overrides: tuple[str, ...]  # dotlist of the train run on top of the base config
    train_cfg: DictConfig
    eval_cfg: DictConfig | None  # the length-generalisation evaluation of run_dir/policy; None: none


def read_experiment(path: str) -> Experiment:
    """The experiment file, every field checked; a ConfigError names the file and the field."""
    raw = read_yaml_mapping(path, "experiment", ", ".join(FIELDS))
    _known(raw, FIELDS, "", path)
    for key in ("base", "phase", "num_problems", "seeds", "settings", "grid"):
        if key not in raw:
            raise ConfigError(f"{path}: {key}: missing ({FIELDS[key]})")
    phase = raw["phase"]
    if phase not in PHASES:
        raise ConfigError(f"{path}: phase: bad value {phase!r}; allowed: one of {', '.join(PHASES)}")
    n = raw["num_problems"]
    if not isinstance(n, int) or n < PHASES[phase].min_problems:
        raise ConfigError(
            f"{path}: num_problems: bad value {n!r}; the {phase} phase needs >= {PHASES[phase].min_problems}"
        )
    seeds = raw["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) for s in seeds)
        or len(set(seeds)) < len(seeds)
    ):
        raise ConfigError(f"{path}: seeds: bad value {seeds!r}; allowed: a non-empty list of distinct integers")
    if not os.path.isfile(raw["base"]):
        raise ConfigError(f"{path}: base: no config file at {raw['base']!r} (paths are from where steprl runs)")
    stem = os.path.splitext(os.path.basename(path))[0]
    return Experiment(
        path=path,
        base=raw["base"],
        phase=phase,
        num_problems=n,
        seeds=seeds,
        settings=_settings(raw["settings"], path),
        grid=_grid(raw["grid"], path),
        overrides=_overrides(raw.get("overrides") or {}, "overrides", path),
        sweep_dir=raw.get("sweep_dir") or os.path.join("runs", "sweeps", stem),
    )


def _known(raw: dict, fields: dict[str, str], prefix: str, path: str) -> None:
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{path}: {prefix}{key}: unknown key{hint}")


def _overrides(raw: Any, where: str, path: str, owned: tuple[str, ...] = SWEEP_KEYS) -> dict[str, Any]:
    """A mapping of dotted config keys; the keys the sweep owns are refused (they would be overwritten)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where}: must be a mapping of dotted config keys to values")
    for key in raw:
        if key in owned:
            raise ConfigError(f"{path}: {where}.{key}: set by the sweep for every cell (it owns {', '.join(owned)})")
    return dict(raw)


def _settings(raw: Any, path: str) -> dict[str, Setting]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: settings: must be a non-empty mapping of setting name -> {{target, overrides}}")
    out = {}
    for name, spec in raw.items():
        where = f"settings.{name}"
        if not SETTING_NAME.fullmatch(str(name)):
            raise ConfigError(f"{path}: {where}: a setting name may use letters, digits, '_' and '-' only")
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: {where}: must be a mapping of {', '.join(SETTING_FIELDS)}")
        _known(spec, SETTING_FIELDS, where + ".", path)
        target = spec.get("target")
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
            raise ConfigError(f"{path}: {where}.target: bad value {target!r}; allowed: {SETTING_FIELDS['target']}")
        out[str(name)] = Setting(
            float(target),
            _overrides(spec.get("overrides") or {}, where + ".overrides", path),
            _overrides(spec.get("length_generalisation") or {}, where + ".length_generalisation", path, EVAL_KEYS),
        )
    return out


def _grid(raw: Any, path: str) -> list[dict[str, list[Any]]]:
    """The grids of the file: one mapping, or a non-empty list of them."""
    if isinstance(raw, list) and raw:
        return [_one_grid(g, f"grid[{i}]", path) for i, g in enumerate(raw)]
    return [_one_grid(raw, "grid", path)]


def _one_grid(raw: Any, where: str, path: str) -> dict[str, list[Any]]:
    grid = _overrides(raw, where, path)
    if not grid:
        raise ConfigError(f"{path}: {where}: must name at least one dotted config key with a list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: {where}.{key}: must be a non-empty list of values, got {values!r}")
    return grid


def dotted(key: str, value: Any) -> str:
    """`key=value` as a command line override: bare when OmegaConf reads it back as this very string, JSON
    (which OmegaConf parses as YAML) otherwise, so numbers, lists and odd strings keep their type."""
    if isinstance(value, str) and value and not UNSAFE_IN_DIR.search(value):
        back = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))
        if isinstance(back, dict) and back["v"] == value:
            return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def grid_labels(grids: list[dict[str, list[Any]]]) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(label, key -> value, dotlist) for every combination of every grid, in the file's order."""
    out = []
    for grid in grids:
        for values in itertools.product(*grid.values()):
            chosen = dict(zip(grid, values, strict=True))
            items = [dotted(k, v) for k, v in chosen.items()]
            out.append((",".join(items), chosen, items))
    return out


def label_dir(label: str) -> str:
    """The directory name of a grid label (characters a path should not hold become '_')."""
    return UNSAFE_IN_DIR.sub("_", label)


def expand(exp: Experiment, cli_overrides: Sequence[str] = (), check_reward_models: bool = True) -> list[Cell]:
    """Every cell of the experiment, its configs built and validated (a ConfigError names the cell).
    check_reward_models=False skips only the check that reward model directories exist (a PRM that another
    command, steprl train-prm, makes before the sweep runs)."""
    for item in cli_overrides:
        key = item.split("=", 1)[0]
        if key in SWEEP_KEYS:
            raise ConfigError(f"command line: {key}: set by the sweep for every cell")
        if key in exp.grid_keys:
            raise ConfigError(f"command line: {key}: a grid key of {exp.path}; change the grid instead")
    phase = PHASES[exp.phase]
    labels = grid_labels(exp.grid)
    dirs = [label_dir(label) for label, _, _ in labels]
    if len(set(dirs)) < len(dirs):  # the same label twice, or two labels that differ only in unsafe characters
        raise ConfigError(f"{exp.path}: grid: two grid labels share the directory name {_duplicate(dirs)!r}")
    cells = []
    for name, setting in exp.settings.items():
        clash = sorted(set(setting.overrides) & exp.grid_keys)
        if clash:
            raise ConfigError(f"{exp.path}: settings.{name}.overrides.{clash[0]}: also a grid key; set it in one place")
        for (label, chosen, items), dirname in zip(labels, dirs, strict=True):
            for seed in exp.seeds:
                run_dir = os.path.join(exp.sweep_dir, name, dirname, f"seed{seed}")
                overrides = (
                    *[dotted(k, v) for k, v in exp.overrides.items()],
                    *[dotted(k, v) for k, v in setting.overrides.items()],
                    *items,
                    *cli_overrides,
                    f"seed={seed}",
                    f"eval.split={phase.split}",
                    f"eval.num_problems={exp.num_problems}",
                    f"run_dir={run_dir}",
                )
                where = f"{exp.path}: settings.{name}, {label}, seed {seed}"
                train_cfg = _load(exp.base, overrides, where, check_reward_models)
                eval_cfg = None
                if setting.length_generalisation:
                    evaluation = (
                        *overrides,
                        *[dotted(k, v) for k, v in setting.length_generalisation.items()],
                        f"model.policy={os.path.join(run_dir, 'policy')}",
                        f"run_dir={os.path.join(run_dir, 'length_generalisation')}",
                    )
                    eval_cfg = _load(exp.base, evaluation, where + " (length_generalisation)", check_reward_models)
                cells.append(Cell(name, label, chosen, seed, run_dir, overrides, train_cfg, eval_cfg))
    return cells


def _load(base: str, overrides: Sequence[str], where: str, check_reward_models: bool = True) -> DictConfig:
    try:
        return load_config(base, overrides, check_reward_models=check_reward_models)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _duplicate(items: list[str]) -> str:
    return next(x for i, x in enumerate(items) if x in items[:i])
