"""Load and validate an experiment config: YAML + dotlist overrides onto the schema, checked in the driver.

Every error is a ConfigError whose message starts with the dotted field name. Unknown keys name the closest
valid key; bad values name the value and what is allowed; cross-field rules name the fields that disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Callable, Sequence
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from algo import registry
from orchestrator.config import (
    ROLES,
    ExperimentConfig,
    RoleResources,
)
from orchestrator.feature_rules import check_features
from orchestrator.rules import RULES, ConfigError
from workers.sources import PRM_FORMATS, SOURCES


def load_config(
    path: str | None, overrides: Sequence[str] = (), check_files: bool = True, check_reward_models: bool = True
) -> DictConfig:
    """Schema <- YAML file <- dotlist overrides, validated; returns a read-only DictConfig.
    check_files=False skips the checks that named files exist (to validate a cluster recipe elsewhere);
    check_reward_models=False skips only the reward sources' model directories (commands that build no reward
    worker, e.g. steprl train-prm, which writes the PRM a later steprl train of the same config scores with)."""
    layers = []
    if path is not None:
        raw = read_yaml_mapping(path, "config", "sections")
        check_known_keys(raw, ExperimentConfig, "", source=path)
        layers.append(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        raw = plain_dict(OmegaConf.from_dotlist([item]))
        check_known_keys(raw, ExperimentConfig, "", source="command line")
        layers.append(raw)
    try:
        # one merge of every layer: each merge deep-copies the whole config (steprl sweep builds hundreds)
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), *layers)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, DictConfig)  # the schema is a mapping, and so are the layers
    validate(cfg)
    if check_files:
        validate_files(cfg, check_reward_models)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def read_yaml_mapping(path: str, kind: str, items: str) -> dict:
    """A YAML file whose top level is a mapping (of `items`); a ConfigError names the file otherwise."""
    if not os.path.isfile(path):
        raise ConfigError(f"{kind} file not found: {path}")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of {items}, got {type(raw).__name__}")
    return raw


def plain_dict(node: Any) -> dict[str, Any]:
    """OmegaConf.to_container of a mapping node (a DictConfig), typed as the plain dict it is."""
    plain = OmegaConf.to_container(node)
    if not isinstance(plain, dict):
        raise TypeError(f"expected a config mapping, got {type(plain).__name__}")
    return cast(dict[str, Any], plain)  # config keys are strings


def check_known_keys(raw: dict, schema: type, prefix: str, source: str) -> None:
    """Every key of `raw` must be a field of `schema` (recursively); suggest the closest valid key."""
    fields = {fl.name: fl for fl in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{dotted}: unknown key in {source}{hint}")
        sub = _dataclass_of(hints[key])
        item = _item_dataclass(hints[key])
        if sub is not None and isinstance(value, dict):
            check_known_keys(value, sub, dotted + ".", source)
        elif item is not None and isinstance(value, list):
            for i, elem in enumerate(value):
                if isinstance(elem, dict):
                    check_known_keys(elem, item, f"{dotted}[{i}].", source)
        elif item is RoleResources and isinstance(value, dict):
            for role, res in value.items():
                if role not in ROLES:
                    raise ConfigError(f"{dotted}.{role}: unknown role; valid roles: {', '.join(ROLES)}")
                if isinstance(res, dict):
                    check_known_keys(res, RoleResources, f"{dotted}.{role}.", source)


def _dataclass_of(tp) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _item_dataclass(tp) -> type | None:
    """The dataclass inside list[X] / dict[str, X], if any."""
    args = typing.get_args(tp)
    return _dataclass_of(args[-1]) if args else None


# ---------------------------------------------------------------- value rules: (field, check, allowed) ----
def validate(cfg: DictConfig) -> None:
    for key, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}: bad value {value!r}; allowed: {allowed()}")
    for i, src in enumerate(cfg.reward.sources):
        if src.name not in SOURCES:
            raise ConfigError(
                f"reward.sources[{i}].name: bad value {src.name!r}; allowed: one of " + ", ".join(SOURCES)
            )
        spec = SOURCES[src.name]
        if not src.weight >= 0:
            raise ConfigError(f"reward.sources[{i}].weight: bad value {src.weight!r}; allowed: a number >= 0")
        if spec.needs_path and not src.path:
            raise ConfigError(f"reward.sources[{i}].path: the {src.name} source needs a model directory")
        if src.name == "prm" and src.format not in PRM_FORMATS:
            raise ConfigError(
                f"reward.sources[{i}].format: bad value {src.format!r}; allowed: one of " + ", ".join(PRM_FORMATS)
            )
        if spec.task_kinds is not None and cfg.task.kind not in spec.task_kinds:
            raise ConfigError(
                f"reward.sources[{i}].name: the {src.name} source needs task.kind in "
                f"{', '.join(spec.task_kinds)} (got {cfg.task.kind!r}); use a prm source for other tasks"
            )
        if not src.online_lr >= 0 or src.online_batch_size < 1:
            raise ConfigError(
                f"reward.sources[{i}].online_lr / online_batch_size: bad values {src.online_lr!r} / "
                f"{src.online_batch_size!r}; allowed: a learning rate >= 0 and a batch size >= 1"
            )
        if src.online_lr > 0 and src.name != "prm":
            raise ConfigError(f"reward.sources[{i}].online_lr: only a prm source learns online, not {src.name}")
    step_weights = [s.weight for s in cfg.reward.sources if SOURCES[s.name].gives == "step"]
    if step_weights and sum(step_weights) <= 0:
        raise ConfigError("reward.sources: the weights of the step sources sum to 0 (their mean is undefined)")
    _check_validation_split(cfg.task.kind, cfg.eval)
    takes = registry.TRANSFORMS[cfg.reward.transform].params
    for key in cfg.reward.transform_params:
        if key not in takes:
            raise ConfigError(
                f"reward.transform_params.{key}: the {cfg.reward.transform} transform takes "
                f"{', '.join(takes) or 'no parameters'}"
            )
    _cross_field(cfg)
    check_features(cfg)


def validate_files(cfg: DictConfig, check_reward_models: bool = True) -> None:
    """Files and directories the config names must exist (checked in the driver, before Ray starts)."""
    for i, src in enumerate(cfg.reward.sources):
        if check_reward_models and SOURCES[src.name].needs_path and not os.path.isdir(src.path):
            raise ConfigError(f"reward.sources[{i}].path: no model directory at {src.path!r}")
    if cfg.task.kind == "jsonl":
        for key in ("train_path", "eval_path"):
            if not os.path.isfile(cfg.task[key]):
                raise ConfigError(f"task.{key}: no JSONL file at {cfg.task[key]!r}")
        if cfg.eval.validation_path is not None and not os.path.isfile(cfg.eval.validation_path):
            raise ConfigError(f"eval.validation_path: no JSONL file at {cfg.eval.validation_path!r}")
    _check_local_bf16(cfg)


def _check_local_bf16(cfg: DictConfig, cpuinfo: str = "/proc/cpuinfo") -> None:
    """model.dtype=bfloat16 with a role on the CPU of this machine (a local Ray: cluster.address null) needs
    the CPU's bf16 kernels; refused here in milliseconds rather than by the role after Ray has started
    (engine.process.role_dtype makes the same check with torch in every role, wherever it runs)."""
    if cfg.model.dtype != "bfloat16" or cfg.cluster.address is not None or not os.path.isfile(cpuinfo):
        return
    models = {  # the roles that run a model in model.dtype in this run
        "generator": True,
        "learner": True,
        "critic": needs_critic(cfg),
        "reference": cfg.algo.kl_coef > 0,
        "reward": any(SOURCES[s.name].needs_path for s in cfg.reward.sources),
    }
    cpu_roles = [role for role, used in models.items() if used and cfg.cluster.roles[role].num_gpus <= 0]
    if not cpu_roles:
        return
    with open(cpuinfo) as fh:
        flags = {w for line in fh if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    if not cpu_bf16_kernels(flags):
        raise ConfigError(
            f"model.dtype: bfloat16 needs bf16 kernels on this CPU (roles {', '.join(sorted(cpu_roles))} run "
            "on it: cluster.roles.<role>.num_gpus=0), which it lacks (no AVX-512 BW/VL/DQ, AMX or Arm bf16); "
            "use model.dtype=float32"
        )


def cpu_bf16_kernels(flags: set[str]) -> bool:
    """The CPU features (/proc/cpuinfo flags) with which torch's oneDNN runs bf16 natively: what
    torch.ops.mkldnn._is_mkldnn_bf16_supported() reports (AVX-512 core on x86, AMX, or Arm's bf16)."""
    return {"avx512bw", "avx512vl", "avx512dq"} <= flags or "amx_bf16" in flags or "bf16" in flags


def _cross_field(cfg: DictConfig) -> None:
    t, r, learner, a = cfg.task, cfg.rollout, cfg.learner, cfg.algo
    estimator = registry.ESTIMATORS[a.estimator]
    if t.min_steps > t.max_steps:
        raise ConfigError(f"task.min_steps ({t.min_steps}) > task.max_steps ({t.max_steps})")
    if t.operand_max >= t.modulus:
        raise ConfigError(f"task.operand_max ({t.operand_max}) must be < task.modulus ({t.modulus})")
    if t.kind == "jsonl":
        for key in ("train_path", "eval_path"):
            if not t[key]:
                raise ConfigError(f"task.{key}: task.kind=jsonl needs a JSONL file")
    elif t.chat_template != "none":
        # The arithmetic oracle parses the prompt text as written, and the tiny policy never saw a template.
        raise ConfigError(
            f"task.chat_template={t.chat_template} applies to JSONL prompts; task.kind={t.kind} needs "
            "task.chat_template=none"
        )
    batch = r.prompts_per_step * r.group_size
    unit = learner.num_ranks * learner.mini_batches * learner.micro_batch_size
    if batch % (learner.num_ranks * learner.mini_batches):
        raise ConfigError(
            f"rollout.prompts_per_step x rollout.group_size ({batch}) must be divisible by "
            f"learner.num_ranks x learner.mini_batches ({learner.num_ranks * learner.mini_batches})"
        )
    per_rank_mini = batch // (learner.num_ranks * learner.mini_batches)
    if per_rank_mini % learner.micro_batch_size:
        raise ConfigError(
            f"learner.micro_batch_size ({learner.micro_batch_size}) must divide the per-rank "
            f"mini-batch {per_rank_mini} = rollout.prompts_per_step x rollout.group_size / "
            f"(learner.num_ranks x learner.mini_batches); one unit is {unit} samples"
        )
    if estimator.needs_groups and r.group_size < 2:
        raise ConfigError(
            f"algo.estimator={a.estimator} compares samples of a prompt: it needs "
            f"rollout.group_size >= 2 (got {r.group_size})"
        )
    if r.dynamic_sampling and not estimator.needs_groups:
        groups = ", ".join(n for n, e in registry.ESTIMATORS.items() if e.needs_groups)
        raise ConfigError(
            f"rollout.dynamic_sampling=true drops groups whose samples agree, which only group estimators "
            f"need; algo.estimator={a.estimator} compares no groups (group estimators: {groups})"
        )
    if r.max_new_tokens >= r.max_model_len:
        raise ConfigError(
            f"rollout.max_new_tokens ({r.max_new_tokens}) must be < rollout.max_model_len "
            f"({r.max_model_len}) to leave room for the prompt"
        )
    for role, used in (("learner", True), ("critic", needs_critic(cfg))):  # the roles DeepSpeed trains
        if used and learner.backend == "nccl" and cfg.cluster.roles[role].num_gpus <= 0:
            raise ConfigError(f"learner.backend=nccl needs cluster.roles.{role}.num_gpus > 0")
    if cfg.sync.method == "collective" and learner.backend == "nccl" and cfg.cluster.roles.generator.num_gpus <= 0:
        # the broadcast runs over learner.backend, and NCCL moves CUDA tensors only
        raise ConfigError("sync.method=collective with learner.backend=nccl needs cluster.roles.generator.num_gpus > 0")
    if a.tis_cap is not None and a.off_policy != "decoupled":
        raise ConfigError(
            f"algo.tis_cap={a.tis_cap} caps the importance weight of algo.off_policy=decoupled; "
            f"algo.off_policy={a.off_policy} has none (set algo.off_policy=decoupled, or tis_cap=null)"
        )
    if a.clip_normalized and "clip_normalized" not in estimator.params:
        takers = ", ".join(n for n, e in registry.ESTIMATORS.items() if "clip_normalized" in e.params)
        raise ConfigError(
            f"algo.clip_normalized=true clips group-normalised step rewards; algo.estimator={a.estimator} "
            f"normalises none (estimators that take it: {takers})"
        )
    if learner.critic_warmup_steps and not estimator.needs_values:
        critics = ", ".join(n for n, e in registry.ESTIMATORS.items() if e.needs_values)
        raise ConfigError(
            f"learner.critic_warmup_steps={learner.critic_warmup_steps} but algo.estimator="
            f"{a.estimator} uses no critic (critic estimators: {critics})"
        )
    if estimator.needs_step_rewards and not any(SOURCES[s.name].gives == "step" for s in cfg.reward.sources):
        steps = ", ".join(n for n, s in SOURCES.items() if s.gives == "step")
        raise ConfigError(
            f"algo.estimator={a.estimator} needs step rewards but reward.sources has no step source ({steps})"
        )


# How each task kind gets a validation split: the eval field that makes it, and whether that field is set.
VALIDATION_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "arithmetic": ("eval.validation_percent", lambda ev: ev.validation_percent > 0),
    "jsonl": ("eval.validation_path", lambda ev: ev.validation_path is not None),
}


def _check_validation_split(kind: str, ev: DictConfig) -> None:
    """eval.split=validation needs the task kind's validation field; the other kind's field is an error
    (set, it would be silently ignored)."""
    field, is_set = VALIDATION_FIELDS[kind]
    if ev.split == "validation" and not is_set(ev):
        raise ConfigError(
            f"eval.split=validation: task.kind={kind} takes its validation split from {field}, which is not set"
        )
    for other_kind, (other, other_set) in VALIDATION_FIELDS.items():
        if other_kind != kind and other_set(ev):
            raise ConfigError(f"{other}: applies to task.kind={other_kind}; task.kind={kind} uses {field}")


def needs_critic(cfg: DictConfig) -> bool:
    return registry.ESTIMATORS[cfg.algo.estimator].needs_values


def explain(schema: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted name, default, doc."""
    lines = []
    hints = typing.get_type_hints(schema)
    for fl in dataclasses.fields(schema):
        sub = _dataclass_of(hints[fl.name])
        if sub is not None:
            lines += explain(sub, f"{prefix}{fl.name}.")
        else:
            if fl.default is not dataclasses.MISSING:
                default = fl.default
            elif callable(fl.default_factory):  # i.e. not MISSING
                default = fl.default_factory()
            else:
                raise TypeError(f"{prefix}{fl.name}: schema field has neither a default nor a default_factory")
            lines.append(f"{prefix}{fl.name} = {default!r}  # {fl.metadata.get('doc', '')}")
    return lines
