"""The config schema: every YAML validates; bad configs fail in the driver with the field named."""

import dataclasses
import glob
import inspect
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from algo import registry
from algo.schedules import SCHEDULES
from orchestrator import validate
from orchestrator.config import DTYPES, ROLES, SYNC_METHODS, AlgoConfig
from orchestrator.validate import ConfigError, explain, load_config
from tasks import TASKS
from tasks.oracle import STEP_MEANINGS
from workers.sources import SOURCES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.yaml")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_config_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name repo-relative paths
    gpu_recipe = "gpu" in os.path.basename(path)  # its models and data live on the cluster's shared storage
    # prm_cpu.yaml's reward source scores with runs/prm_cpu/prm, which its own `steprl train-prm` writes: the
    # directory does not exist before that command has run, so the model directories are not checked for it
    # (as steprl label / train-prm / search, which build no reward worker, do not check them).
    makes_its_reward_model = os.path.basename(path) == "prm_cpu.yaml"
    cfg = load_config(path, check_files=not gpu_recipe, check_reward_models=not makes_its_reward_model)
    assert cfg.run_dir


def test_no_second_list_of_choices():
    # validation reads the registries themselves: the old mirrors in orchestrator.validate are gone
    for name in ("ESTIMATORS", "TRANSFORMS", "CRITIC_ESTIMATORS", "REWARD_SOURCES"):
        assert not hasattr(validate, name), name
    assert getattr(validate, "ROLES", ROLES) is ROLES
    assert getattr(validate, "STEP_MEANINGS", STEP_MEANINGS) is STEP_MEANINGS
    # each implementing module binds exactly the registry's names
    from algo.advantages import ESTIMATOR_FNS
    from algo.kl import KL_FNS
    from algo.transforms import TRANSFORM_FNS

    assert list(ESTIMATOR_FNS) == list(registry.ESTIMATORS)
    assert list(TRANSFORM_FNS) == list(registry.TRANSFORMS)
    assert list(KL_FNS) == list(registry.KL_ESTIMATORS)


def _required_keywords(fn) -> set[str]:
    return {
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    }


def test_one_default_per_knob():
    """An estimator's config parameters have no default in algo/ (the config schema holds it), and a
    transform's defaults live in algo.registry.TRANSFORMS only."""
    from algo.advantages import ESTIMATOR_FNS
    from algo.transforms import TRANSFORM_FNS

    algo_fields = {fl.name for fl in dataclasses.fields(AlgoConfig)}
    for name, spec in registry.ESTIMATORS.items():
        assert _required_keywords(ESTIMATOR_FNS[name]) == set(spec.params), name
        assert set(spec.params) <= algo_fields, name
    for name, spec in registry.TRANSFORMS.items():
        assert _required_keywords(TRANSFORM_FNS[name]) == set(spec.params), name


@pytest.mark.parametrize(
    "key, names",
    [
        ("algo.estimator", list(registry.ESTIMATORS)),
        ("reward.transform", list(registry.TRANSFORMS)),
        ("algo.kl_estimator", list(registry.KL_ESTIMATORS)),
        ("algo.loss_agg", list(registry.LOSS_AGGREGATIONS)),
        ("learner.schedule", list(SCHEDULES)),
        ("reward.meaning", list(STEP_MEANINGS)),
        ("model.dtype", list(DTYPES)),
        ("sync.method", list(SYNC_METHODS)),
    ],
)
def test_every_registry_name_is_a_valid_choice(key, names, monkeypatch):
    # bfloat16 is a valid name on any machine; whether this CPU runs it is tests/engine/test_engine_devices.py's
    monkeypatch.setattr("orchestrator.validate.cpu_bf16_kernels", lambda flags: True)
    for name in names:
        assert OmegaConf.select(load_config(DEMO, [f"{key}={name}"]), key) == name


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algo.estimater=gae", "algo.estimater: unknown key in command line (did you mean 'algo.estimator'?)"),
        ("learner.zero_stage=5", "learner.zero_stage: bad value 5; allowed: one of 0, 1, 2, 3"),
        ("sync.method=tcp", "sync.method: bad value 'tcp'; allowed: one of object_store, collective"),
        ("algo.estimator=foo", "algo.estimator: bad value 'foo'; allowed: one of grpo_outcome"),
        ("learner.num_ranks=abc", "learner.num_ranks: Value 'abc'"),
        ("cluster.roles.gpu.num_cpus=1", "cluster.roles.gpu: unknown role"),
        ("reward.sources=[{name: prm, pth: x}]", "reward.sources[0].pth: unknown key"),
        ("reward.meaning=value", "reward.meaning: bad value 'value'"),
        ("algo.dual_clip=1.0", "algo.dual_clip: bad value 1.0; allowed: null or a number > 1"),
        ("algo.dual_clip=0.5", "algo.dual_clip: bad value 0.5; allowed: null or a number > 1"),
        ("algo.entropy_coef=-0.01", "algo.entropy_coef: bad value -0.01; allowed: a number >= 0"),
        ("algo.sft_coef=-1", "algo.sft_coef: bad value -1"),
        ("algo.kl_coef=-0.1", "algo.kl_coef: bad value -0.1"),
        (
            "algo.loss_agg=token_sum_norm",
            "algo.loss_agg: bad value 'token_sum_norm'; allowed: one of token, step, sequence",
        ),
        ("algo.loss_agg=per_token", "algo.loss_agg: bad value 'per_token'"),
        ("algo.kl_estimator=k4", "algo.kl_estimator: bad value 'k4'; allowed: one of k1, k2, k3"),
        ("model.dtype=float16", "model.dtype: bad value 'float16'; allowed: one of float32, bfloat16"),
        ("learner.schedule=linear_decay", "learner.schedule: bad value 'linear_decay'"),
        ("task.kind=gsm8k", "task.kind: bad value 'gsm8k'; allowed: one of arithmetic, jsonl"),
        ("task.chat_template=chatml", "task.chat_template: bad value 'chatml'; allowed: one of none, model"),
        (
            "reward.transform_params={eta: 0.5}",
            "reward.transform_params.eta: the identity transform takes no parameters",
        ),
        (
            "reward.sources=[{name: judge}]",
            "reward.sources[0].name: bad value 'judge'; allowed: one of oracle, outcome, prm",
        ),
        ("reward.sources=[{name: prm}]", "reward.sources[0].path: the prm source needs a model directory"),
        ("reward.sources=[{name: oracle, online_lr: 0.1}]", "reward.sources[0].online_lr: only a prm source learns"),
        ("reward.sources=[{name: prm, path: p, online_lr: -1}]", "reward.sources[0].online_lr / online_batch_size"),
        (
            "reward.sources=[{name: prm, path: p, online_lr: 0.1}]",
            "reward.sources[0].online_lr: an online PRM learns from outcomes; add {name: outcome}",
        ),
        (
            "reward.sources=[{name: prm, path: p, online_lr: 0.1}, {name: prm, path: q, online_lr: 0.1}, "
            "{name: outcome}]",
            "reward.sources[1].online_lr: at most one prm source may learn online",
        ),
        ("label.kinds=[mc_sof]", "label.kinds: bad value ['mc_sof']; allowed: a non-empty list of oracle, mc_hard"),
        ("label.kinds=[oracle,value]", "label.kinds: bad value ['oracle', 'value']"),
        ("label.kinds=[]", "label.kinds: bad value []"),
        ("search.methods=[beam,bon]", "search.methods: bad value ['beam', 'bon']; allowed: a list of greedy"),
        ("search.methods=[]", "search.methods: bad value []"),
        ("search.aggregation=mean", "search.aggregation: bad value 'mean'; allowed: one of product, min, last"),
        ("prm.threshold=1.5", "prm.threshold: bad value 1.5; allowed: a number in (0, 1)"),
        ("prm.threshold=0", "prm.threshold: bad value 0"),
        ("prm.threshold=1.0", "prm.threshold: bad value 1.0"),
    ],
)
def test_bad_value_names_the_field(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert str(err.value).startswith(expected)


@pytest.mark.parametrize(
    "overrides, fields",
    [
        (["rollout.group_size=3"], ["learner.micro_batch_size", "rollout.group_size"]),
        (["task.min_steps=6", "task.max_steps=3"], ["task.min_steps", "task.max_steps"]),
        (["rollout.group_size=1", "learner.micro_batch_size=8"], ["algo.estimator", "rollout.group_size"]),
        (["learner.backend=nccl"], ["learner.backend", "cluster.roles.learner.num_gpus"]),
        (  # the critic is a DeepSpeed world of its own, over learner.backend too
            ["learner.backend=nccl", "cluster.roles.learner.num_gpus=1", "algo.estimator=gae"],
            ["learner.backend", "cluster.roles.critic.num_gpus"],
        ),
        (
            ["learner.backend=nccl", "cluster.roles.learner.num_gpus=1", "sync.method=collective"],
            ["sync.method=collective", "learner.backend=nccl", "cluster.roles.generator.num_gpus"],
        ),
        (["learner.critic_warmup_steps=3"], ["learner.critic_warmup_steps", "algo.estimator", "gae, step_ppo"]),
        (["reward.sources=[{name: outcome}]"], ["algo.estimator", "reward.sources", "oracle, prm"]),
        (["task.chat_template=model"], ["task.chat_template=model", "task.kind=arithmetic"]),
    ],
)
def test_cross_field_rules_name_both_fields(overrides, fields):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, overrides)
    for name in fields:
        assert name in str(err.value)


def test_label_and_search_names_are_valid_choices():
    from orchestrator.config import LABEL_KINDS, SEARCH_METHODS

    assert list(load_config(DEMO, [f"label.kinds=[{','.join(LABEL_KINDS)}]"]).label.kinds) == list(LABEL_KINDS)
    for name in SEARCH_METHODS:
        assert list(load_config(DEMO, [f"search.methods=[{name}]"]).search.methods) == [name]
    for how in ("product", "min", "last"):
        assert load_config(DEMO, [f"search.aggregation={how}"]).search.aggregation == how


def test_short_forms_of_policy_and_prm():
    from orchestrator.cli import ALIASES, _alias

    assert ALIASES == {"policy=": "model.policy=", "prm=": "prm.path="}
    assert _alias("prm=runs/prm_cpu/prm") == "prm.path=runs/prm_cpu/prm"
    assert _alias("policy=runs/demo/final") == "model.policy=runs/demo/final"
    assert _alias("prm=a=b") == "prm.path=a=b"  # only the first '=' is the key's
    for untouched in ("prm.path=x", "prm.epochs=2", "policy_x=1", "model.policy=y", "reward.sources=[{name: prm}]"):
        assert _alias(untouched) == untouched
    # through the loader, as orchestrator.cli.main applies it to every override
    assert load_config(DEMO, [_alias("prm=some/prm_dir")]).prm.path == "some/prm_dir"


def test_unknown_key_in_yaml_names_file_and_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  group_sise: 4\n")
    with pytest.raises(
        ConfigError,
        match=r"rollout.group_sise: unknown key in .*bad.yaml \(did you mean "
        r"'rollout.group_size'\?\)",
    ):
        load_config(str(bad))


def test_transform_params_are_checked_against_the_transform():
    cfg = load_config(DEMO, ["reward.transform=log_prob", "reward.transform_params={min_value: -2.0}"])
    assert cfg.reward.transform_params.min_value == -2.0
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["reward.transform=log_prob", "reward.transform_params={min_val: -2.0}"])
    assert str(err.value).startswith("reward.transform_params.min_val: the log_prob transform takes log_z, min_value")


def test_capability_rules_follow_the_registries():
    # every estimator needing groups / step rewards / a critic is held to it, whatever its name
    for name, spec in registry.ESTIMATORS.items():
        over = [f"algo.estimator={name}"]
        if spec.needs_groups:
            with pytest.raises(ConfigError, match="rollout.group_size >= 2"):
                load_config(DEMO, over + ["rollout.group_size=1", "learner.micro_batch_size=8"])
        if spec.needs_step_rewards:
            with pytest.raises(ConfigError, match="needs step rewards"):
                load_config(DEMO, over + ["reward.sources=[{name: outcome}]"])
        if not spec.needs_values:
            with pytest.raises(ConfigError, match="uses no critic"):
                load_config(DEMO, over + ["learner.critic_warmup_steps=2"])
        else:
            assert validate.needs_critic(load_config(DEMO, over + ["learner.critic_warmup_steps=2"]))
        if "clip_normalized" in spec.params:
            assert load_config(DEMO, over + ["algo.clip_normalized=true"]).algo.clip_normalized
        else:
            with pytest.raises(
                ConfigError, match=f"algo.clip_normalized=true .* algo.estimator={name} normalises none"
            ):
                load_config(DEMO, over + ["algo.clip_normalized=true"])
    assert set(TASKS) == {"arithmetic", "jsonl"} and set(SOURCES) == {"oracle", "outcome", "prm"}


def test_chat_template_choices_and_the_gpu_recipe():
    from tasks.chat import CHAT_TEMPLATES

    assert getattr(validate, "CHAT_TEMPLATES", CHAT_TEMPLATES) is CHAT_TEMPLATES  # one list, imported
    assert load_config(DEMO).task.chat_template == "none"
    jsonl = ["task.kind=jsonl", "task.train_path=a.jsonl", "task.eval_path=b.jsonl"]
    jsonl.append("reward.sources=[{name: prm, path: p}]")
    for name in CHAT_TEMPLATES:
        assert load_config(DEMO, [*jsonl, f"task.chat_template={name}"], check_files=False).task.chat_template == name
    # the Instruct recipe prompts in the model's chat format and cuts steps at blank lines
    gpu = load_config(os.path.join(ROOT, "configs", "gpu_qwen25_math_1p5b.yaml"), check_files=False)
    assert (gpu.task.chat_template, gpu.rollout.step_delimiter) == ("model", "\n\n")


def test_named_files_must_exist_when_a_command_starts(tmp_path):
    gpu = os.path.join(ROOT, "configs", "gpu_qwen25_math_1p5b.yaml")
    with pytest.raises(ConfigError, match=r"reward.sources\[0\].path: no model directory at '/shared"):
        load_config(gpu)
    with pytest.raises(ConfigError, match=r"reward.sources\[0\].name: the oracle source needs task.kind in arithmetic"):
        load_config(DEMO, ["task.kind=jsonl", "task.train_path=a.jsonl", "task.eval_path=b.jsonl"])


def test_missing_file_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))


def test_resolved_config_is_read_only_and_overrides_apply():
    cfg = load_config(
        DEMO, ["algo.estimator=gae", "reward.transform=log_prob", "reward.transform_params={min_value: -2.0}"]
    )
    assert cfg.algo.estimator == "gae"
    assert cfg.reward.transform_params.min_value == -2.0
    with pytest.raises(ReadonlyConfigError):
        cfg.algo.estimator = "rloo"


def test_every_field_has_a_doc():
    lines = explain()
    assert len(lines) > 50
    assert all(line.split("# ", 1)[1].strip() for line in lines), [line for line in lines if line.endswith("# ")]


def test_cli_help_and_fast_failure_import_no_torch(tmp_path):
    """`steprl --help` works, and a bad config fails before torch / ray are imported (so it fails fast)."""
    exe = os.path.join(os.path.dirname(sys.executable), "steprl")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "eval" in out.stdout
    code = (
        f"import sys; from orchestrator.cli import main; rc = main(['train', {DEMO!r}, 'learner.zero_stage=7']); "
        "assert rc == 2, rc; heavy = [m for m in ('torch', 'ray', 'vllm', 'deepspeed') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "config error: learner.zero_stage: bad value 7" in out.stderr


def test_online_prm_runs_in_one_reward_actor():
    online = "reward.sources=[{name: prm, path: p, online_lr: 0.1}, {name: outcome}]"
    with pytest.raises(ConfigError, match="reward.replicas: an online PRM .* is one model in one reward actor; got 2"):
        load_config(DEMO, [online, "reward.replicas=2"], check_files=False)
    assert load_config(DEMO, [online], check_files=False).reward.sources[0].online_batch_size == 32


def test_dynamic_sampling_needs_a_group_estimator():
    cfg = load_config(DEMO, ["rollout.dynamic_sampling=true", "algo.estimator=grpo_outcome"])
    assert cfg.rollout.dynamic_sampling and cfg.rollout.dynamic_max_rounds == 3
    assert load_config(DEMO, ["rollout.dynamic_max_rounds=0"]).rollout.dynamic_max_rounds == 0
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["rollout.dynamic_max_rounds=-1"])
    assert str(err.value).startswith("rollout.dynamic_max_rounds: bad value -1; allowed: an integer >= 0")
    for name, spec in registry.ESTIMATORS.items():  # every estimator without groups, whatever its name
        if not spec.needs_groups:
            with pytest.raises(ConfigError) as err:
                load_config(DEMO, ["rollout.dynamic_sampling=true", f"algo.estimator={name}"])
            assert "rollout.dynamic_sampling" in str(err.value) and f"algo.estimator={name}" in str(err.value)


def test_curriculum_rules_name_the_field():
    on = ["task.curriculum.levels=[3,5]", "eval.validation_percent=10"]
    cfg = load_config(DEMO, [*on, "task.curriculum.threshold=1.0", "task.curriculum.every=1"])
    assert list(cfg.task.curriculum.levels) == [3, 5] and cfg.task.curriculum.num_problems == 100
    assert list(load_config(DEMO).task.curriculum.levels) == []  # off by default
    for override, expected in [
        ("task.curriculum.levels=[5,3]", "task.curriculum.levels: bad value [5, 3]; allowed: a strictly increasing"),
        ("task.curriculum.levels=[3,3]", "task.curriculum.levels: bad value [3, 3]"),
        ("task.curriculum.threshold=0", "task.curriculum.threshold: bad value 0.0; allowed: a number in (0, 1]"),
        ("task.curriculum.threshold=1.5", "task.curriculum.threshold: bad value 1.5"),
        ("task.curriculum.every=0", "task.curriculum.every: bad value 0; allowed: an integer >= 1"),
        ("task.curriculum.num_problems=0", "task.curriculum.num_problems: bad value 0"),
        ("task.curriculum.levels=[1,5]", "task.curriculum.levels: every level must be >= task.min_steps (2)"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(DEMO, [*on, override])
        assert str(err.value).startswith(expected), override
    with pytest.raises(ConfigError) as err:  # no validation split to decide on (the test split is never used)
        load_config(DEMO, ["task.curriculum.levels=[3,5]"])
    assert str(err.value).startswith("task.curriculum.levels") and "eval.validation_percent" in str(err.value)
    jsonl = ["task.kind=jsonl", "task.train_path=a.jsonl", "task.eval_path=b.jsonl", "eval.validation_path=v.jsonl"]
    jsonl.append("reward.sources=[{name: prm, path: p}]")
    with pytest.raises(ConfigError, match=r"task.curriculum.levels: .* needs task.kind=arithmetic \(got jsonl\)"):
        load_config(DEMO, [*jsonl, "task.curriculum.levels=[3,5]"], check_files=False)


def test_one_critic_per_reward_rules_name_the_field():
    from types import SimpleNamespace

    from orchestrator.train import settings

    two = "algo.critics=[{reward: process}, {reward: outcome, weight: 0.5}]"
    for name in ("gae", "step_ppo"):
        cfg = load_config(DEMO, [f"algo.estimator={name}", two])
        assert [(c.reward, c.weight) for c in cfg.algo.critics] == [("process", 1.0), ("outcome", 0.5)]
        assert validate.needs_critic(cfg)
        assert settings(cfg, SimpleNamespace(pad_id=0), 1).critic_weights == {"process": 1.0, "outcome": 0.5}
    default = load_config(DEMO, ["algo.estimator=gae"])  # no list: one critic on the combined reward, as ever
    assert list(default.algo.critics) == [] and settings(default, SimpleNamespace(pad_id=0), 1).critic_weights == {}
    gae = ["algo.estimator=gae"]
    for overrides, expected in [
        (["algo.critics=[{reward: all}]"], "algo.critics[0].reward: bad value 'all'; allowed: one of process, outcome"),
        (["algo.critics=[{reward: outcome, weight: -1}]"], "algo.critics[0].weight: bad value -1.0; allowed: a number"),
        (["algo.critics=[{reward: outcome, weihgt: 1}]"], "algo.critics[0].weihgt: unknown key in command line"),
        (
            ["algo.critics=[{reward: outcome}, {reward: outcome}]"],
            "algo.critics[1].reward: outcome already has a critic (algo.critics[0]); at most one critic per reward",
        ),
        (["algo.critics=[{reward: process, weight: 0}]"], "algo.critics: the weights sum to 0"),
        (
            ["algo.critics=[{reward: process}]", "reward.sources=[{name: outcome}]"],
            "algo.critics[0].reward: the process critic needs a source of step rewards in reward.sources (oracle, prm)",
        ),
        (
            ["algo.critics=[{reward: outcome}]", "reward.sources=[{name: oracle}]"],
            "algo.critics[0].reward: the outcome critic needs a source of outcome rewards in reward.sources (outcome)",
        ),
        (["algo.critics=[{reward: outcome}]", "algo.outcome_weight=0.5"], "algo.outcome_weight=0.5: with algo.critics"),
        (
            ["algo.critics=[{reward: outcome}]", "algo.kl_coef=0.05", "algo.kl_in=reward"],
            "algo.kl_in=reward puts the KL penalty into the reward",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(DEMO, gae + overrides)
        assert str(err.value).startswith(expected), overrides
    assert load_config(DEMO, [*gae, "algo.critics=[{reward: outcome}]", "algo.kl_coef=0.05"]).algo.kl_in == "loss"
    for name, spec in registry.ESTIMATORS.items():  # every estimator without a critic, whatever its name
        if not spec.needs_values:
            with pytest.raises(ConfigError) as err:
                load_config(DEMO, [f"algo.estimator={name}", "algo.critics=[{reward: outcome}]"])
            assert str(err.value).startswith("algo.critics: one critic per reward needs a critic estimator (gae, ")
