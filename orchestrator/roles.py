"""Create every role's actors from the config, in one placement group; hand out plain values only."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf

from engine.build import TrainSettings
from learner.group import LearnerGroup
from learner.objective import ObjectiveCoefs
from orchestrator.checkpoint import checkpoint_root, critic_checkpoint_name
from orchestrator.generators import GeneratorPool
from orchestrator.guided import GoldWriter
from orchestrator.rundir import logs_dir
from orchestrator.runtime import Placement, plan_bundles, ray_get
from orchestrator.validate import needs_critic, plain_dict
from workers.critic import CriticWorker
from workers.generator import GeneratorWorker
from workers.reference import ReferenceWorker
from workers.reward import RewardWorker


@dataclass
class Roles:
    generators: GeneratorPool
    rewards: list[Any]  # reward.replicas RewardWorker actors
    learner: LearnerGroup
    critic: Any | None  # the critic of the combined reward (gae, step_ppo without algo.critics)
    reference: Any | None
    placement: Placement
    pad_id: int
    online_prm: Any | None = None  # the reward actor whose PRM learns online, if any (workers/online_prm.py)
    critics: dict[str, Any] = field(default_factory=dict)  # algo.critics: reward -> the critic of that reward
    gold_writer: GoldWriter | None = None  # algo.guided: writes gold solutions as trajectories (in the driver)

    def shutdown(self) -> None:
        self.learner.shutdown()
        self.generators.shutdown()
        for actor in [*self.rewards, self.critic, *self.critics.values(), self.reference]:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        self.placement.remove()


def start_roles(cfg: DictConfig, policy_dir: str, total_updates: int, run_dir: str | None = None) -> Roles:
    """Every role's actors, ready. With run_dir, actor output goes to run_dir/logs/<role>-<i>.log and a
    Ray-restarted critic reloads the run's newest critic checkpoint. One critic on the combined reward, or
    with algo.critics one per listed reward (Roles.critics)."""
    log_dir = logs_dir(run_dir) if run_dir else None
    checkpoint_dir = checkpoint_root(run_dir) if run_dir else None
    threads, timeout = cfg.cluster.threads_per_actor, cfg.train.timeout_s
    use_critic, use_ref = needs_critic(cfg), cfg.algo.kl_coef > 0
    critic_rewards = [c.reward for c in cfg.algo.critics]  # validated: only with a critic estimator
    counts = {
        "generator": cfg.rollout.num_generators,
        "reward": cfg.reward.replicas,
        "learner": cfg.learner.num_ranks,
        "critic": len(critic_rewards) or int(use_critic),
        "reference": int(use_ref),
    }
    roles_cfg = plain_dict(cfg.cluster.roles)
    placement = Placement(cfg.cluster.placement_strategy, plan_bundles(counts, roles_cfg)).create(timeout)
    common = dict(threads=threads, trust_remote_code=cfg.model.trust_remote_code)

    def log(name: str) -> str | None:
        return os.path.join(log_dir, f"{name}.log") if log_dir else None

    def restartable(cls, role: str) -> Any:
        """Ray re-creates a dead actor in its bundle and re-runs its unfinished calls (the reward and the
        reference hold no state; the critic reloads its newest checkpoint)."""
        n = cfg.train.max_actor_restarts
        return ray.remote(cls).options(**placement.options(role), max_restarts=n, max_task_retries=n)

    r = cfg.rollout
    generators = GeneratorPool(
        generator_maker(cfg, policy_dir, placement, log),
        r.num_generators,
        max_restarts=cfg.train.max_actor_restarts,
        timeout_s=timeout,
    )
    rewards = [
        restartable(RewardWorker, "reward").remote(
            tokenizer_dir=policy_dir,
            sources=OmegaConf.to_container(cfg.reward.sources),
            meaning=cfg.reward.meaning,
            transform=cfg.reward.transform,
            transform_params=OmegaConf.to_container(cfg.reward.transform_params),
            task_kind=cfg.task.kind,
            modulus=cfg.task.modulus,
            step_delimiter=r.step_delimiter,
            dtype=cfg.model.dtype,  # of a prm source's model
            restore_dir=checkpoint_dir,
            log_file=log(f"reward-{i}"),
            **common,
        )
        for i in range(cfg.reward.replicas)
    ]

    def make_critic(reward: str | None) -> Any:
        """The critic of `reward` (None: of the combined reward), its checkpoints and log under its own name."""
        name = critic_checkpoint_name(reward)
        return restartable(CriticWorker, "critic").remote(
            model_dir=policy_dir,
            critic_dir=cfg.model.critic,
            train=train_settings(cfg, cfg.learner.critic_lr, total_updates),
            backend=cfg.learner.backend,  # its own one-rank world; nccl puts DeepSpeed on the GPU Ray gave it
            value_clip=cfg.algo.value_clip,
            loss_agg=cfg.algo.loss_agg,
            seed=cfg.seed,
            timeout_s=timeout,
            deterministic=cfg.train.deterministic,
            restore_dir=checkpoint_dir,
            checkpoint_name=name,
            log_file=log(name),
            **common,
        )

    critic = make_critic(None) if use_critic and not critic_rewards else None
    critics = {reward: make_critic(reward) for reward in critic_rewards}
    reference = None
    if use_ref:
        reference = restartable(ReferenceWorker, "reference").remote(
            model_dir=policy_dir,
            micro_batch_size=cfg.learner.micro_batch_size,
            dtype=cfg.model.dtype,
            deterministic=cfg.train.deterministic,
            log_file=log("reference"),
            **common,
        )
    a = cfg.algo
    objective = ObjectiveCoefs(
        clip_low=a.clip_low,
        clip_high=a.clip_high,
        dual_clip=a.dual_clip,
        loss_agg=a.loss_agg,
        entropy_coef=a.entropy_coef,
        kl_coef=a.kl_coef if a.kl_in == "loss" else 0.0,
        kl_estimator=a.kl_estimator,
        sft_coef=a.sft_coef,
        off_policy=a.off_policy,
        tis_cap=a.tis_cap,
        guided_max_weight=a.guided.max_weight if a.guided.enable else None,
    )
    rank_kwargs = dict(
        model_dir=policy_dir,
        backend=cfg.learner.backend,
        train=train_settings(cfg, cfg.learner.lr, total_updates),
        objective=objective,
        seed=cfg.seed,
        timeout_s=timeout,
        deterministic=cfg.train.deterministic,
        **common,
    )
    learner_res = roles_cfg["learner"]
    learner = LearnerGroup(
        num_ranks=cfg.learner.num_ranks,
        rank_kwargs=rank_kwargs,
        cpus_per_rank=learner_res["num_cpus"],
        gpus_per_rank=learner_res["num_gpus"],
        timeout_s=timeout,
        placement_group=placement.pg,
        bundle_indices=placement.indices("learner"),
        log_dir=log_dir,
    )
    generators.wait_ready()
    critic_actors = (("critic", critic), *((critic_checkpoint_name(r), c) for r, c in critics.items()))
    for role, actor in (*(("reward", a) for a in rewards), *critic_actors, ("reference", reference)):
        if actor is not None:
            ray_get(actor.__ray_ready__.remote(), role, "__init__", timeout)
    return Roles(
        generators,
        rewards,
        learner,
        critic,
        reference,
        placement,
        tokenizer_pad_id(policy_dir, cfg.model.trust_remote_code),
        rewards[0] if any(s.online_lr > 0 for s in cfg.reward.sources) else None,
        critics,
        GoldWriter(policy_dir, r.step_delimiter, cfg.model.trust_remote_code) if a.guided.enable else None,
    )


def generator_maker(cfg: DictConfig, policy_dir: str, placement: Placement, log: Callable[[str], str | None]):
    """make(i): the GeneratorWorker actor of replica i of `policy_dir`, in its placement bundle."""
    r = cfg.rollout

    def make_generator(i: int):
        return (
            ray.remote(GeneratorWorker)
            .options(**placement.options("generator", i))
            .remote(
                policy_dir,
                seed=cfg.seed,
                dtype=cfg.model.dtype,
                max_model_len=r.max_model_len,
                kv_cache_gb=r.kv_cache_gb,
                step_delimiter=r.step_delimiter,
                enforce_eager=r.enforce_eager,
                gpu_memory_utilization=r.gpu_memory_utilization,
                replica=i,
                log_file=log(f"generator-{i}"),
                threads=cfg.cluster.threads_per_actor,
                trust_remote_code=cfg.model.trust_remote_code,
            )
        )

    return make_generator


def start_generators(cfg: DictConfig, policy_dir: str, run_dir: str) -> tuple[GeneratorPool, Placement]:
    """Only the generator replicas of `policy_dir` (labelling and search need no learner), ready."""
    log_dir = logs_dir(run_dir)
    counts = {"generator": cfg.rollout.num_generators}
    placement = Placement(cfg.cluster.placement_strategy, plan_bundles(counts, plain_dict(cfg.cluster.roles)))
    placement.create(cfg.train.timeout_s)
    pool = GeneratorPool(
        generator_maker(cfg, policy_dir, placement, lambda name: os.path.join(log_dir, f"{name}.log")),
        cfg.rollout.num_generators,
        max_restarts=cfg.train.max_actor_restarts,
        timeout_s=cfg.train.timeout_s,
    )
    pool.wait_ready()
    return pool, placement


@contextmanager
def generator_session(cfg: DictConfig, policy_dir: str, run_dir: str) -> Iterator[GeneratorPool]:
    """Ray (started here unless already up) and the generator replicas of `policy_dir`, torn down on exit."""
    from orchestrator.runtime import init_ray

    started = not ray.is_initialized()
    init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.threads_per_actor)
    pool, placement = start_generators(cfg, policy_dir, run_dir)
    try:
        yield pool
    finally:
        pool.shutdown()
        placement.remove()
        if started:
            ray.shutdown()


def train_settings(cfg: DictConfig, lr: float, total_updates: int) -> TrainSettings:
    """How the policy (and, with its own lr, the critic) is trained: learner.* fields of the config."""
    learner = cfg.learner
    return TrainSettings(
        lr=lr,
        weight_decay=learner.weight_decay,
        warmup_steps=learner.warmup_steps,
        total_steps=total_updates,
        schedule=learner.schedule,
        grad_clip=learner.grad_clip,
        zero_stage=learner.zero_stage,
        micro_batch_size=learner.micro_batch_size,
        epochs=learner.ppo_epochs,
        mini_batches=learner.mini_batches,
        # model.dtype reaches the learner ranks and the critic here: DeepSpeed bf16 (fp32 master weights), and
        # the learner exports weights in it (LearnerRank.named_weights) for generators running model.dtype.
        bf16=cfg.model.dtype == "bfloat16",
    )


def placement_report(roles: Roles, timeout_s: float) -> dict[str, list[str]]:
    """Role -> the Ray node ids its actors run on (shows how the placement group spread the roles)."""

    def node(_self):
        return ray.get_runtime_context().get_node_id()

    actors = {
        "generator": roles.generators.actors,
        "reward": roles.rewards,
        "learner": roles.learner.ranks,
        "critic": ([roles.critic] if roles.critic else []) + list(roles.critics.values()),
        "reference": [roles.reference] if roles.reference else [],
    }
    return {
        role: ray_get([a.__ray_call__.remote(node) for a in handles], role, "node id", timeout_s)
        for role, handles in actors.items()
        if handles
    }


def tokenizer_pad_id(policy_dir: str, trust_remote_code: bool) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir, trust_remote_code=trust_remote_code)
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def policy_dir_exists(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))
