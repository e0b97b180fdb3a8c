"""The config schema: every YAML validates; bad configs fail in the driver with the field named."""

import glob
import os
import subprocess
import sys

import pytest

from orchestrator.validate import ESTIMATORS, TRANSFORMS, ConfigError, explain, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.yaml")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_config_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)   # configs name repo-relative paths
    gpu_recipe = "gpu" in os.path.basename(path)   # its models and data live on the cluster's shared storage
    cfg = load_config(path, check_files=not gpu_recipe)
    assert cfg.run_dir


def test_mirrored_choices_equal_the_algo_registries():
    from algo.advantages import ESTIMATORS as registry
    from algo.transforms import REWARD_TRANSFORMS
    assert set(ESTIMATORS) == set(registry)
    assert set(TRANSFORMS) == set(REWARD_TRANSFORMS)


@pytest.mark.parametrize("override, expected", [
    ("algo.estimater=gae", "algo.estimater: unknown key in command line (did you mean 'algo.estimator'?)"),
    ("learner.zero_stage=5", "learner.zero_stage: bad value 5; allowed: one of 0, 1, 2, 3"),
    ("algo.estimator=foo", "algo.estimator: bad value 'foo'; allowed: one of grpo_outcome"),
    ("learner.num_ranks=abc", "learner.num_ranks: Value 'abc'"),
    ("cluster.roles.gpu.num_cpus=1", "cluster.roles.gpu: unknown role"),
    ("reward.sources=[{name: prm, pth: x}]", "reward.sources[0].pth: unknown key"),
    ("reward.meaning=value", "reward.meaning: bad value 'value'"),
])
def test_bad_value_names_the_field(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert str(err.value).startswith(expected)


@pytest.mark.parametrize("overrides, fields", [
    (["rollout.group_size=3"], ["learner.micro_batch_size", "rollout.group_size"]),
    (["task.min_steps=6", "task.max_steps=3"], ["task.min_steps", "task.max_steps"]),
    (["rollout.group_size=1", "learner.micro_batch_size=8"], ["algo.estimator", "rollout.group_size"]),
    (["learner.backend=nccl"], ["learner.backend", "cluster.roles.learner.num_gpus"]),
    (["learner.critic_warmup_steps=3"], ["learner.critic_warmup_steps", "algo.estimator"]),
])
def test_cross_field_rules_name_both_fields(overrides, fields):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, overrides)
    for name in fields:
        assert name in str(err.value)


def test_unknown_key_in_yaml_names_file_and_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  group_sise: 4\n")
    with pytest.raises(ConfigError, match=r"rollout.group_sise: unknown key in .*bad.yaml \(did you mean "
                                          r"'rollout.group_size'\?\)"):
        load_config(str(bad))


def test_named_files_must_exist_when_a_command_starts(tmp_path):
    gpu = os.path.join(ROOT, "configs", "gpu_qwen25_math_1p5b.yaml")
    with pytest.raises(ConfigError, match=r"reward.sources\[0\].path: no PRM model directory at '/shared"):
        load_config(gpu)
    with pytest.raises(ConfigError, match="reward.sources\\[0\\].name: the oracle step verifier needs"):
        load_config(DEMO, ["task.kind=jsonl", "task.train_path=a.jsonl", "task.eval_path=b.jsonl"])


def test_missing_file_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))


def test_resolved_config_is_read_only_and_overrides_apply():
    cfg = load_config(DEMO, ["algo.estimator=gae", "reward.transform_params={min_value: -2.0}"])
    assert cfg.algo.estimator == "gae"
    assert cfg.reward.transform_params.min_value == -2.0
    with pytest.raises(Exception):
        cfg.algo.estimator = "rloo"


def test_every_field_has_a_doc():
    lines = explain()
    assert len(lines) > 50
    assert all(line.split("# ", 1)[1].strip() for line in lines), [l for l in lines if l.endswith("# ")]


def test_cli_help_and_fast_failure_import_no_torch(tmp_path):
    """`steprl --help` works, and a bad config fails before torch / ray are imported (so it fails fast)."""
    exe = os.path.join(os.path.dirname(sys.executable), "steprl")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "eval" in out.stdout
    code = ("import sys; from orchestrator.cli import main; rc = main(['train', %r, 'learner.zero_stage=7']); "
            "assert rc == 2, rc; heavy = [m for m in ('torch', 'ray', 'vllm', 'deepspeed') if m in sys.modules]; "
            "assert not heavy, heavy" % DEMO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "config error: learner.zero_stage: bad value 7" in out.stderr
