"""`steprl sweep`: grid expansion, errors that name the field, resuming, and the report's numbers worked by hand.

No Ray and no model: the runners are fakes that write what `steprl train` and `steprl eval` write (metrics.jsonl,
summary.json, the policy directory) with curves chosen here.
"""

import dataclasses
import glob
import json
import math
import os

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.experiment import dotted, expand, read_experiment
from orchestrator.sweep import Runners, run_sweep
from orchestrator.sweep_report import aggregate, band, samples_to_target
from orchestrator.validate import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.yaml")

# (estimator, seed) -> the (samples, eval/accuracy) points a fake run logs, and its length-generalisation accuracy.
CURVES = {
    ("grpo_process", 0): [(0, 0.40), (1024, 0.45), (2048, 0.52), (3072, 0.60)],
    ("grpo_process", 1): [(0, 0.40), (1024, 0.55), (2048, 0.50), (3072, 0.58)],
    ("grpo_outcome", 0): [(0, 0.40), (1024, 0.42), (2048, 0.47), (3072, 0.49)],
    ("grpo_outcome", 1): [(0, 0.40), (1024, 0.44), (2048, 0.45), (3072, 0.46)],
}
LENGTH = {("grpo_process", 0): 0.10, ("grpo_process", 1): 0.06, ("grpo_outcome", 0): 0.05, ("grpo_outcome", 1): 0.03}


def experiment(tmp_path, **changes) -> str:
    spec = {
        "base": DEMO,
        "phase": "validation",
        "num_problems": 50,
        "seeds": [0, 1],
        "sweep_dir": str(tmp_path / "sweep"),
        "overrides": {"eval.validation_percent": 10, "train.steps": 30},
        "settings": {
            "demo": {"target": 0.5, "length_generalisation": {"task.min_steps": 6, "task.max_steps": 7}},
            "hard": {"target": 0.5, "overrides": {"task.min_steps": 6, "task.max_steps": 7}},
        },
        "grid": {"algo.estimator": ["grpo_outcome", "grpo_process"]},
    }
    spec.update(changes)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


class FakeCommands:
    """Records every call; writes the files of a finished train run / eval run."""

    def __init__(self):
        self.trained, self.evaluated = [], []

    def train(self, cfg):
        self.trained.append((cfg.run_dir, cfg.resume))
        curve = CURVES[(cfg.algo.estimator, cfg.seed)]
        with open(os.path.join(cfg.run_dir, "metrics.jsonl"), "w") as fh:
            for step, (samples, acc) in enumerate(curve):
                fh.write(json.dumps({"step": 2 * step, "samples": samples, "eval/accuracy": acc}) + "\n")
                fh.write(json.dumps({"step": 2 * step + 1, "samples": samples + 512}) + "\n")  # a step without eval
        os.makedirs(os.path.join(cfg.run_dir, "policy"), exist_ok=True)
        with open(os.path.join(cfg.run_dir, "summary.json"), "w") as fh:
            json.dump({"eval/accuracy_after": curve[-1][1]}, fh)
        return {}

    def evaluate(self, cfg):
        self.evaluated.append(cfg.run_dir)
        assert os.path.isdir(cfg.model.policy)  # the cell's final policy
        os.makedirs(cfg.run_dir, exist_ok=True)
        with open(os.path.join(cfg.run_dir, "summary.json"), "w") as fh:
            json.dump({"eval/accuracy": LENGTH[(cfg.algo.estimator, cfg.seed)]}, fh)
        return {}

    def runners(self) -> Runners:
        return Runners(self.train, self.evaluate, lambda run_dir: os.path.isdir(os.path.join(run_dir, "checkpoints")))


def test_grid_expansion_order_and_precedence(tmp_path):
    grids = [
        {"algo.estimator": ["grpo_outcome", "rloo"]},
        {"algo.estimator": ["grpo_process"], "reward.meaning": ["step_correct", "strict_step"]},
    ]
    exp = read_experiment(experiment(tmp_path, grid=grids))
    cells = expand(exp, ["learner.lr=1e-4"])
    # 2 settings x (2 + 1 x 2) labels x 2 seeds, setting outermost, seed innermost
    assert len(cells) == 16
    assert [c.label for c in cells[:8:2]] == [
        "algo.estimator=grpo_outcome",
        "algo.estimator=rloo",
        "algo.estimator=grpo_process,reward.meaning=step_correct",
        "algo.estimator=grpo_process,reward.meaning=strict_step",
    ]
    c = cells[13]  # hard, grpo_process + step_correct, seed 1
    assert (c.setting, c.seed, c.grid_values) == (
        "hard",
        1,
        {"algo.estimator": "grpo_process", "reward.meaning": "step_correct"},
    )
    assert c.run_dir == os.path.join(
        str(tmp_path / "sweep"), "hard", "algo.estimator=grpo_process,reward.meaning=step_correct", "seed1"
    )
    t = c.train_cfg
    assert (t.seed, t.run_dir, t.eval.split, t.eval.num_problems) == (1, c.run_dir, "validation", 50)
    assert (t.task.min_steps, t.task.max_steps, t.train.steps, t.learner.lr) == (6, 7, 30, 1e-4)
    assert c.eval_cfg is None  # hard has no length-generalisation overrides
    e = cells[0].eval_cfg  # demo: its final policy on chains of 6-7 operations, in a directory of its own
    assert (e.model.policy, e.run_dir) == (
        os.path.join(cells[0].run_dir, "policy"),
        os.path.join(cells[0].run_dir, "length_generalisation"),
    )
    assert (e.task.min_steps, e.task.max_steps, e.eval.split, e.seed) == (6, 7, "validation", 0)
    assert cells[0].train_cfg.task.max_steps == 5  # the base config's


def test_dotted_keeps_types():
    assert dotted("algo.estimator", "gae") == "algo.estimator=gae"
    assert dotted("learner.lr", 1e-4) == "learner.lr=0.0001"
    assert dotted("task.operators", "1e-4") == 'task.operators="1e-4"'  # bare, OmegaConf would read a float
    assert dotted("reward.transform_params", {"min_value": -2.0}) == 'reward.transform_params={"min_value": -2.0}'


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seed": [0]}, r"exp.yaml: seed: unknown key \(did you mean 'seeds'\?\)"),
        ({"phase": "test"}, "exp.yaml: num_problems: bad value 50; the test phase needs >= 1000"),
        ({"phase": "dev"}, "exp.yaml: phase: bad value 'dev'; allowed: one of validation, test"),
        ({"seeds": [0, 0]}, "exp.yaml: seeds: bad value"),
        ({"base": "nope.yaml"}, "exp.yaml: base: no config file at 'nope.yaml'"),
        ({"overrides": {"eval.split": "test"}}, "exp.yaml: overrides.eval.split: set by the sweep"),
        ({"grid": {"algo.estimator": []}}, "exp.yaml: grid.algo.estimator: must be a non-empty list"),
        ({"grid": [{"seed": [1, 2]}]}, r"exp.yaml: grid\[0\].seed: set by the sweep"),
        ({"settings": {"demo": {"target": 1.5}}}, "exp.yaml: settings.demo.target: bad value 1.5"),
        ({"settings": {"demo": {"target": 0.5, "overrides": {"algo.estimator": "gae"}}}}, "also a grid key"),
        ({"settings": {"a b": {"target": 0.5}}}, "settings.a b: a setting name may use"),
        ({"settings": {"demo": {"target": 0.5, "length_generalisation": {"model.policy": "x"}}}}, "set by the sweep"),
        ({"grid": {"algo.estimator": ["gae", "gae"]}}, "two grid labels share the directory name"),
        # a bad value is found before any cell runs, with the cell and the field named
        (
            {"grid": {"algo.estimator": ["grpo_process", "nope"]}},
            "exp.yaml: settings.demo, algo.estimator=nope, seed 0: algo.estimator: bad value 'nope'",
        ),
        (
            {"overrides": {}},  # no eval.validation_percent: the validation phase has no split to evaluate on
            "eval.split=validation: task.kind=arithmetic takes its validation split from eval.validation_percent",
        ),
    ],
)
def test_bad_experiments_name_the_file_and_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        expand(read_experiment(experiment(tmp_path, **changes)))


def test_command_line_may_not_set_sweep_or_grid_keys(tmp_path):
    exp = read_experiment(experiment(tmp_path))
    with pytest.raises(ConfigError, match="command line: seed: set by the sweep"):
        expand(exp, ["seed=3"])
    with pytest.raises(ConfigError, match="command line: algo.estimator: a grid key"):
        expand(exp, ["algo.estimator=gae"])


def test_runs_every_cell_once_and_resumes(tmp_path):
    path, out, fake = experiment(tmp_path), str(tmp_path / "report"), FakeCommands()
    run_sweep(path, [], out, "steprl sweep exp.yaml", runners=fake.runners())
    cells = expand(read_experiment(path))
    assert len(fake.trained) == len(cells) == 8 and not any(resume for _, resume in fake.trained)
    assert len(fake.evaluated) == 4  # the demo setting's cells only
    # done: nothing runs again
    again = FakeCommands()
    run_sweep(path, [], out, "steprl sweep exp.yaml", runners=again.runners())
    assert again.trained == [] and again.evaluated == []
    # a cell interrupted after a checkpoint (no summary.json) resumes from it; a lost evaluation is redone alone
    interrupted, unevaluated = cells[1].run_dir, cells[2].run_dir
    os.remove(os.path.join(interrupted, "summary.json"))
    os.makedirs(os.path.join(interrupted, "checkpoints"))
    os.remove(os.path.join(unevaluated, "length_generalisation", "summary.json"))
    third = FakeCommands()
    run_sweep(path, [], out, "steprl sweep exp.yaml", runners=third.runners())
    assert third.trained == [(interrupted, True)]
    assert third.evaluated == [os.path.join(unevaluated, "length_generalisation")]


def test_run_dirs_of_other_settings_are_refused(tmp_path):
    path, out = experiment(tmp_path), str(tmp_path / "report")
    run_sweep(path, [], out, "steprl sweep exp.yaml", runners=FakeCommands().runners())
    with pytest.raises(ConfigError, match="holds a run made with other settings"):
        run_sweep(path, ["learner.lr=1e-4"], out, "steprl sweep exp.yaml", runners=FakeCommands().runners())


def test_report_numbers_worked_by_hand(tmp_path):
    path, out = experiment(tmp_path), str(tmp_path / "report")
    report = run_sweep(path, [], out, "steprl sweep exp.yaml --out report", runners=FakeCommands().runners())
    demo = report["settings"]["demo"]["results"]
    process = demo["algo.estimator=grpo_process"]
    # target 0.5: seed 0 first reaches it at 2048 samples (0.52), seed 1 at 1024 (0.55; its later dip to 0.50
    # does not matter): (2048 + 1024) / 2 = 1536, both seeds reached it.
    assert process["samples_to_target"] == 1536 and process["seeds_reached_target"] == 2
    assert process["seeds"] == [0, 1] and process["target"] == 0.5
    # final 0.60 and 0.58: mean 0.59, sample std |0.60 - 0.58| / sqrt(2) = 0.01414
    assert math.isclose(process["final_accuracy_mean"], 0.59)
    assert math.isclose(process["final_accuracy_std"], 0.02 / math.sqrt(2))
    # length generalisation 0.10 and 0.06: mean 0.08, std 0.04 / sqrt(2) = 0.02828
    assert math.isclose(process["length_generalisation_accuracy_mean"], 0.08)
    assert math.isclose(process["length_generalisation_accuracy_std"], 0.04 / math.sqrt(2))
    # the band over seeds at 0, 1024, 2048, 3072 samples (rows without eval/accuracy are not points)
    assert process["curve"]["samples"] == [0, 1024, 2048, 3072]
    assert process["curve"]["mean"] == pytest.approx([0.40, 0.50, 0.51, 0.59])
    assert process["curve"]["min"] == [0.40, 0.45, 0.50, 0.58]
    assert process["curve"]["max"] == [0.40, 0.55, 0.52, 0.60]
    # grpo_outcome peaks at 0.49 and 0.46: no seed reaches 0.5
    outcome = demo["algo.estimator=grpo_outcome"]
    assert outcome["samples_to_target"] is None and outcome["seeds_reached_target"] == 0
    assert math.isclose(outcome["final_accuracy_mean"], 0.475)
    # the hard setting has no length-generalisation evaluation
    hard = report["settings"]["hard"]["results"]["algo.estimator=grpo_process"]
    assert hard["length_generalisation_accuracy_mean"] is None and hard["samples_to_target"] == 1536
    # the files: JSON (strict), markdown with the command and a row per label, a plot per setting
    on_disk = json.load(open(os.path.join(out, "learning.json")))
    assert on_disk["command"] == "steprl sweep exp.yaml --out report" and on_disk["phase"] == "validation"
    assert on_disk["settings"]["demo"]["results"]["algo.estimator=grpo_process"]["runs"][0]["train_command"].startswith(
        f"steprl train {DEMO} eval.validation_percent=10 train.steps=30 algo.estimator=grpo_process seed=0"
    )
    md = open(os.path.join(out, "learning.md")).read()
    assert "`steprl sweep exp.yaml --out report`" in md
    assert "| algo.estimator=grpo_process | 1,536 (2/2) | 0.590 ± 0.014 | 0.080 ± 0.028 |" in md
    assert "| algo.estimator=grpo_outcome | - (0/2) | 0.475 ± 0.021 | 0.040 ± 0.014 |" in md
    assert all(os.path.getsize(os.path.join(out, f"learning_{s}.png")) > 0 for s in ("demo", "hard"))
    # a hand-written reading below the notes heading survives remaking the report
    with open(os.path.join(out, "learning.md"), "a") as fh:
        fh.write("\n## What the numbers say\n\nProcess rewards reach the target first.\n")
    run_sweep(path, [], out, "steprl sweep exp.yaml --out report", runners=FakeCommands().runners())
    assert "Process rewards reach the target first." in open(os.path.join(out, "learning.md")).read()


def test_aggregate_counts_only_the_seeds_that_reached_the_target():
    # seed 0 reaches 0.5 at 2048 samples, seed 1 never: samples_to_target 2048 from 1 of 2 seeds
    runs = [
        {"seed": s, "final_accuracy": c[-1][1], "samples_total": 3072, "length_generalisation_accuracy": None}
        | {"samples_to_target": samples_to_target(c, 0.5), "curve": c}
        for s, c in enumerate([[(0, 0.4), (2048, 0.5)], [(0, 0.4), (2048, 0.45)]])
    ]
    out = aggregate(runs, 0.5)
    assert (out["samples_to_target"], out["seeds_reached_target"]) == (2048, 1)
    assert out["length_generalisation_accuracy_mean"] is None
    assert aggregate(runs[:1], 0.5)["final_accuracy_std"] is None  # one seed: no spread
    # seeds evaluated at different sample counts: the band keeps the common ones
    assert band([[(0, 0.4), (100, 0.5)], [(0, 0.2), (50, 0.3), (100, 0.7)]])["samples"] == [0, 100]


def test_cli_dry_run_and_config_errors(tmp_path, capsys):
    path = experiment(tmp_path)
    assert main(["sweep", path, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "8 cells, validation phase" in printed and "0: new, 1: new" in printed
    assert not os.path.exists(tmp_path / "sweep")  # a dry run writes nothing
    assert main(["sweep", path, "seed=1", "--dry-run"]) == 2
    assert "steprl sweep: config error: command line: seed: set by the sweep" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "experiments", "*.yaml"))))
def test_every_experiment_expands(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # experiments name repo-relative paths
    exp = read_experiment(os.path.relpath(path, ROOT))
    # every config validated (seeds change no rule); a PRM an experiment scores with is made by steprl train-prm
    # before the sweep runs, so its directory need not exist here
    cells = expand(dataclasses.replace(exp, seeds=exp.seeds[:1]), check_reward_models=False)
    assert len(cells) == len(exp.settings) * len({c.label for c in cells})
