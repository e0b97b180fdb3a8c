"""The driver's safety rails, without Ray: checkpoints survive a crash mid-write, RNG state round-trips
through JSON, a mistyped policy path is an error (not an SFT run), a broken reward source stops the run."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from orchestrator.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from orchestrator.runtime import RoleError
from orchestrator.train import check_masked, ensure_policy
from orchestrator.validate import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.yaml")


class FakeLearner:
    """Writes a file per checkpoint like the DeepSpeed ranks do; can crash half-way through a write."""

    def __init__(self):
        self.crash = False
        self.loaded = None

    def save_checkpoint(self, path, client_state):
        os.makedirs(path)
        with open(os.path.join(path, "weights.bin"), "w") as fh:
            fh.write(str(client_state))
        if self.crash:
            raise RuntimeError("learner rank 1 died during save")

    def load_checkpoint(self, path):
        self.loaded = path


class FakeRoles:
    def __init__(self):
        self.learner, self.critic, self.online_prm = FakeLearner(), None, None
        self.critics = {}  # algo.critics: none


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    roles, run_dir = FakeRoles(), str(tmp_path)
    save_checkpoint(run_dir, roles, {"step": 1, "version": 1}, keep=2, timeout_s=5)
    roles.learner.crash = True
    with pytest.raises(RuntimeError, match="died during save"):
        save_checkpoint(run_dir, roles, {"step": 2, "version": 2}, keep=2, timeout_s=5)
    newest = latest_checkpoint(run_dir)
    assert newest.endswith("step_000001")  # the half-written step 2 is not a checkpoint
    assert load_checkpoint(newest, roles, timeout_s=5) == {"step": 1, "version": 1}
    roles.learner.crash = False  # the next write replaces the leftover temp dir
    save_checkpoint(run_dir, roles, {"step": 2, "version": 2}, keep=1, timeout_s=5)
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["step_000002"]  # keep=1 keeps one


def test_rng_state_round_trips_as_json(tmp_path):
    roles = FakeRoles()
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    save_checkpoint(str(tmp_path), roles, {"step": 1}, keep=1, timeout_s=5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    load_checkpoint(latest_checkpoint(str(tmp_path)), roles, timeout_s=5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    with open(os.path.join(latest_checkpoint(str(tmp_path)), "driver_rng.json")) as fh:
        assert set(json.load(fh)) == {"python", "numpy", "torch"}  # data, not a pickle


def test_mistyped_policy_is_an_error_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    typo = str(tmp_path / "base_polcy")
    cfg = load_config(DEMO, [f"model.policy={typo}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="model.policy: no model directory .*base_polcy"):
        ensure_policy(cfg)
    assert not os.path.exists(tmp_path / "run" / "sft")  # no SFT was started
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "train",
            DEMO,
            f"model.policy={typo}",
            f"run_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 2 and "base_polcy" in out.stderr
    assert ensure_policy(load_config(DEMO)) == os.path.abspath("tasks/assets/base_policy")


def test_masked_fraction_stops_the_run_after_max_steps():
    broken = {"samples/masked": 16.0, "samples_step": 16, "reward/first_error": "prm: score nan at step 0"}
    healthy = {"samples/masked": 1.0, "samples_step": 16}
    streak = check_masked(0, broken, max_fraction=0.5, max_steps=3)
    streak = check_masked(streak, broken, 0.5, 3)
    assert check_masked(streak, healthy, 0.5, 3) == 0  # one good step resets the count
    streak = check_masked(check_masked(0, broken, 0.5, 3), broken, 0.5, 3)
    with pytest.raises(RoleError, match="3 steps in a row.*prm: score nan"):
        check_masked(streak, broken, 0.5, 3)
