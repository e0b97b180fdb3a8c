"""The experiment schema: one typed config, read once in the driver and passed down as plain values.

Every field carries a one-line doc (`steprl config CONFIG --explain` prints them). `load_config` merges
YAML and dotlist overrides onto the schema and validates everything before any Ray work starts; errors name
the field (and for unknown keys, the closest valid one). See orchestrator/validate.py for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from algo import registry
from algo.schedules import SCHEDULES
from orchestrator.data import EVAL_SPLITS
from tasks.chat import CHAT_TEMPLATES

# The actor roles of a run (cluster.roles.<role>), and the dtypes every role can run in.
ROLES = ("generator", "reward", "critic", "reference", "learner")
DTYPES = ("float32", "bfloat16")
# How new weights reach the generators (learner/weights.py).
SYNC_METHODS = ("object_store", "collective")
# How steps get labels (steprl label), and the test-time search methods (steprl search): each name is bound to
# its implementation in orchestrator/labelling.py and orchestrator/searching.py.
LABEL_KINDS = ("oracle", "mc_hard", "mc_soft", "prover", "corrupt")
SEARCH_METHODS = ("greedy", "majority", "bon_product", "bon_min", "bon_last", "weighted", "beam", "mcts", "reject")


def _names(names) -> str:
    return " | ".join(names)


def _used_by(param: str) -> str:
    """The estimators that take algo.<param> (from the registry, so the doc cannot go stale)."""
    return " (" + ", ".join(n for n, e in registry.ESTIMATORS.items() if param in e.params) + ")"


def f(default: Any, doc: str, **kw):
    """A dataclass field with its one-line doc kept in metadata (for --explain and error messages)."""
    if isinstance(default, (list, dict)) or callable(default):
        factory = default if callable(default) else (lambda d=default: type(d)(d))
        return field(default_factory=factory, metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class CurriculumConfig:
    levels: list[int] = f(
        [],
        "arithmetic: max_steps of each curriculum level in order, e.g. [3, 5, 7]; training draws chains of at most "
        "the current level's operations instead of task.max_steps (evaluation on eval.split keeps task.max_steps, "
        "the final difficulty); empty = no curriculum",
    )
    threshold: float = f(0.6, "greedy pass rate on the validation split at the current level that moves to the next")
    every: int = f(10, "check the pass rate every N train steps (until the last level)")
    num_problems: int = f(100, "validation-split problems per check, drawn at the current level (the same at each)")


@dataclass
class TaskConfig:
    kind: str = f(
        "arithmetic", "task kind (tasks.TASKS): 'arithmetic' (generated chains) or 'jsonl' (prompt/answer rows)"
    )
    min_steps: int = f(2, "fewest operations in a generated chain")
    max_steps: int = f(5, "most operations in a generated chain")
    modulus: int = f(10, "arithmetic is done modulo this number")
    operand_max: int = f(9, "largest operand in a generated chain")
    operators: str = f("+-", "operators a generated chain may use (subset of '+-*')")
    train_path: Optional[str] = f(None, "JSONL file of training prompts (kind=jsonl)")
    eval_path: Optional[str] = f(None, "JSONL file of held-out prompts (kind=jsonl)")
    skip_bad_rows: bool = f(False, "skip (and count) malformed JSONL rows instead of failing")
    chat_template: str = f(
        "none",
        f"template around each JSONL prompt: {_names(CHAT_TEMPLATES)} ('model': the policy tokenizer's chat "
        "template, one user message + generation prompt; use it for Instruct / chat models)",
    )
    curriculum: CurriculumConfig = f(
        CurriculumConfig, "pass-rate curriculum over chain length, decided on the validation split (arithmetic)"
    )


@dataclass
class ModelConfig:
    policy: str = f("tasks/assets/base_policy", "policy model directory (HF format) RL starts from")
    critic: Optional[str] = f(None, "critic model directory; null = value head on a copy of the policy")
    dtype: str = f("float32", f"dtype of every role's model: {_names(DTYPES)}")
    hidden: int = f(128, "tiny policy width (only when SFT creates the policy)")
    layers: int = f(4, "tiny policy layers (only when SFT creates the policy)")
    heads: int = f(4, "tiny policy attention heads (only when SFT creates the policy)")
    kv_heads: int = f(2, "tiny policy key/value heads (only when SFT creates the policy)")
    sft_if_missing: bool = f(
        False,
        "run SFT to create model.policy when it does not exist (otherwise a missing "
        "policy is an error; the committed default policy is always re-created)",
    )
    trust_remote_code: bool = f(False, "let transformers / vLLM run Python code shipped in model directories")


@dataclass
class SFTConfig:
    batches: int = f(480, "optimizer steps of supervised fine-tuning")
    batch_size: int = f(64, "solutions per SFT batch")
    lr: float = f(1e-3, "peak SFT learning rate (AdamW)")
    warmup: int = f(200, "SFT linear warm-up steps")


@dataclass
class RolloutConfig:
    num_generators: int = f(1, "vLLM generator replicas (Ray actors)")
    prompts_per_step: int = f(16, "prompts sampled per train step")
    group_size: int = f(8, "responses sampled per prompt (the GRPO group)")
    temperature: float = f(1.0, "sampling temperature")
    top_p: float = f(1.0, "nucleus sampling mass")
    max_new_tokens: int = f(96, "longest response in tokens (longer ones are truncated, finish_reason=length)")
    step_delimiter: str = f("\n", "text that ends a reasoning step ('\\n\\n' for chat models)")
    max_model_len: int = f(256, "vLLM context length")
    kv_cache_gb: float = f(1.0, "vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = f(0.5, "vLLM GPU memory fraction (GPU only)")
    enforce_eager: bool = f(True, "disable CUDA graphs / compilation in vLLM")
    dynamic_sampling: bool = f(
        False,
        "DAPO dynamic sampling (2503.14476): drop groups whose samples all got the same reward (no signal for a "
        "group estimator) and draw fresh prompts until the batch holds prompts_per_step informative groups",
    )
    dynamic_max_rounds: int = f(
        3,
        "dynamic_sampling: most extra rounds of fresh prompts per step; a batch still short after them is "
        "filled with dropped groups",
    )


@dataclass
class RewardSourceConfig:
    name: str = f("oracle", "reward source: oracle (step verifier), outcome (answer checker), prm (learned PRM)")
    weight: float = f(1.0, "weight of this source when sources are combined")
    path: Optional[str] = f(None, "model directory (prm only)")
    format: str = f(
        "token_classification",
        "prm input layout: token_classification (ours: a head read at the step delimiter) | step_tag "
        "(Math-Shepherd: a causal LM's '+'/'-' logits at a 'ки' tag) | separator_head (Qwen2.5-Math-PRM: "
        "a 2-class head at '<extra_0>') (prm only)",
    )
    online_lr: float = f(
        0.0,
        "prm only: > 0 keeps training the PRM during RL on every scored batch, each step labelled with its "
        "sample's outcome (PRIME 2502.01456), at this AdamW learning rate; 0 keeps it frozen",
    )
    online_batch_size: int = f(32, "prm only: samples per online PRM update (reward.sources[].online_lr)")


@dataclass
class RewardConfig:
    sources: list[RewardSourceConfig] = f(
        lambda: [RewardSourceConfig("oracle", 1.0), RewardSourceConfig("outcome", 1.0)],
        "reward sources; step sources (oracle, prm) give step rewards, outcome sources the outcome reward",
    )
    meaning: str = f("step_correct", "what an oracle step reward means: step_correct | prefix_correct | strict_step")
    transform: str = f("identity", f"step reward transform: {_names(registry.TRANSFORMS)}")
    transform_params: dict[str, float] = f(
        {}, "parameters of the transform, overriding its defaults (algo.registry.TRANSFORMS)"
    )
    replicas: int = f(1, "reward actors (cluster.roles.reward per replica); trajectories go to them in turn")
    batch_size: int = f(
        1, "trajectories per call to a reward actor (one batched PRM forward); 1 scores each as soon as it exists"
    )
    max_masked_fraction: float = f(
        0.5,
        "stop the run when more than this fraction of a step's samples is masked "
        "(a reward source failed) for reward.max_masked_steps steps in a row",
    )
    max_masked_steps: int = f(3, "consecutive steps above reward.max_masked_fraction before the run stops")


@dataclass
class CriticConfig:
    reward: str = f(
        "process",
        f"the reward this critic predicts: {_names(registry.CRITIC_REWARDS)} (process: the step rewards; outcome: "
        "the outcome reward)",
    )
    weight: float = f(1.0, "weight of this critic's advantages in the policy's advantage (>= 0)")


@dataclass
class GuidedConfig:
    enable: bool = f(
        False,
        "LUFFY guided samples (2504.14945): a group whose samples all failed gets the task's gold solution in "
        "place of its last sample, its loss -min(pi_theta / mu, max_weight) * A outside the clip (group estimators)",
    )
    # LUFFY does not cap. At the cap the gold token's gradient is zero, so one step may at most double a gold
    # token's probability: looser than PPO's 1 + clip_high (the gold is known right), but bounded where an
    # uncapped ratio would grow its own gradient on a token the policy finds unlikely.
    max_weight: float = f(2.0, "cap of the gold samples' weight pi_theta / mu (mu: the policy that made the batch)")


@dataclass
class AlgoConfig:
    estimator: str = f("grpo_process", f"advantage estimator: {_names(registry.ESTIMATORS)}")
    gamma: float = f(1.0, "discount" + _used_by("gamma"))
    lam: float = f(0.95, "GAE lambda" + _used_by("lam"))
    outcome_weight: float = f(
        1.0,
        "weight of the outcome reward added to the last step; 0 = process rewards "
        "only, as in DeepSeekMath" + _used_by("outcome_weight"),
    )
    std_normalize: bool = f(True, "divide centred rewards by their std (False: Dr. GRPO)" + _used_by("std_normalize"))
    clip_normalized: bool = f(
        False,
        "clip the group-normalised step rewards at 0 (Gao et al. 2410.15115's clip, after normalisation); "
        "the outcome is normalised on its own and added unclipped" + _used_by("clip_normalized"),
    )
    pav_alpha: float = f(1.0, "weight of the prover advantage" + _used_by("pav_alpha"))
    whiten: bool = f(False, "whiten advantages over the batch after the estimator")
    kl_coef: float = f(0.0, "KL(policy || reference) coefficient; 0 disables the reference worker")
    kl_estimator: str = f("k3", f"KL estimator: {_names(registry.KL_ESTIMATORS)}")
    kl_in: str = f("loss", f"where the KL goes: {_names(registry.KL_PLACEMENTS)}")
    clip_low: float = f(0.2, "PPO ratio clip below 1")
    clip_high: float = f(0.28, "PPO ratio clip above 1 (clip-higher)")
    dual_clip: Optional[float] = f(None, "dual-clip constant c > 1 for negative advantages; null disables")
    value_clip: Optional[float] = f(0.2, "value-loss clip range; null disables")
    loss_agg: str = f("token", f"loss aggregation: {_names(registry.LOSS_AGGREGATIONS)}")
    entropy_coef: float = f(0.0, "entropy bonus coefficient")
    sft_coef: float = f(0.0, "coefficient of a supervised NLL on correct samples mixed into the policy loss")
    off_policy: str = f(
        "recompute",
        f"what the PPO ratio is taken against: {_names(registry.OFF_POLICY)} (recompute: the learner's log-probs "
        "at the step's start; behavior: the generator's; decoupled: the learner's, times the weight pi_old / mu)",
    )
    tis_cap: Optional[float] = f(
        None, "cap of the importance weight pi_old / mu of off_policy=decoupled (truncated IS); null = uncapped"
    )
    critics: list[CriticConfig] = f(
        [],
        "one critic per reward (gae, step_ppo), e.g. [{reward: process}, {reward: outcome, weight: 0.5}]: each "
        "learns its own reward's returns, the advantages are computed per critic and summed with the weights "
        "(the weights replace outcome_weight); empty = one critic on the combined reward",
    )
    guided: GuidedConfig = f(GuidedConfig, "gold solutions for groups that all failed (LUFFY 2504.14945)")


@dataclass
class LearnerConfig:
    num_ranks: int = f(2, "DeepSpeed data-parallel ranks (Ray actors)")
    backend: str = f("gloo", "torch.distributed backend: gloo (CPU) | nccl (GPU)")
    zero_stage: int = f(2, "DeepSpeed ZeRO stage: 0 | 1 | 2 | 3")
    micro_batch_size: int = f(16, "samples per rank per forward/backward")
    lr: float = f(2e-4, "policy learning rate (AdamW)")
    weight_decay: float = f(0.0, "AdamW weight decay")
    warmup_steps: int = f(0, "linear lr warm-up in optimizer steps")
    schedule: str = f("constant", f"lr schedule after warm-up: {_names(SCHEDULES)}")
    grad_clip: float = f(1.0, "gradient norm clip")
    ppo_epochs: int = f(1, "passes over each batch")
    mini_batches: int = f(1, "optimizer steps per pass (the batch is split into this many)")
    critic_lr: float = f(1e-4, "critic learning rate")
    critic_warmup_steps: int = f(0, "train steps that train only the critic, policy frozen")


@dataclass
class SyncConfig:
    method: str = f(
        "object_store",
        f"how new weights reach the generators: {_names(SYNC_METHODS)} (object_store: Ray's object store; "
        "collective: broadcast from learner rank 0 over learner.backend)",
    )


@dataclass
class EvalConfig:
    split: str = f(
        "test",
        f"split evaluated on: {_names(EVAL_SPLITS)} (test: the held-out split results are reported on; validation: "
        "for choosing settings, needs eval.validation_percent or eval.validation_path)",
    )
    validation_percent: int = f(
        0,
        "arithmetic: percent of all problems (by prompt hash) that form the validation split, taken from "
        "training; 0 = no validation split, train and test as ever",
    )
    validation_path: Optional[str] = f(
        None, "jsonl: JSONL file of validation prompts, sharing no prompt with task.train_path / task.eval_path"
    )
    num_problems: int = f(200, "held-out problems per evaluation")
    k: int = f(4, "samples per problem for pass@k")
    temperature: float = f(1.0, "sampling temperature for pass@k")


@dataclass
class TrainConfig:
    steps: int = f(40, "RL train steps")
    eval_every: int = f(10, "evaluate on held-out problems every N steps (0: only before and after)")
    checkpoint_every: int = f(10, "write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = f(2, "checkpoints kept in run_dir/checkpoints")
    timeout_s: float = f(600.0, "deadline of every ray.get / ray.wait on a role (and of learner collectives)")
    max_staleness: int = f(
        0,
        "policy versions a trained sample may lag the learner: 0 = synchronous; k >= 1 = the generators sample "
        "the next batch while the learner trains on the current one",
    )
    deterministic: bool = f(
        True,
        "identical metrics for reruns and resumes of one config on the same machine: "
        "fixed batch order, deterministic torch kernels",
    )
    max_actor_restarts: int = f(
        3, "times a dead generator / reward / critic / reference actor is replaced before the run stops"
    )


@dataclass
class LabelConfig:
    kinds: list[str] = f(
        ["mc_soft"],
        f"label kinds written by steprl label, all on the same policy samples: {_names(LABEL_KINDS)} (oracle: "
        "the arithmetic oracle; mc_hard / mc_soft: Monte-Carlo completions from each step prefix, any / fraction "
        "correct; prover: best-of-K prover success probability; corrupt: gold solutions with one inserted error)",
    )
    meaning: str = f(
        "step_correct",
        "oracle meaning of the oracle and corrupt kinds, and the oracle labels the other kinds are compared with",
    )
    num_problems: int = f(128, "train-split problems whose policy samples are labelled")
    samples_per_problem: int = f(4, "policy samples labelled per problem (corrupt: gold solutions corrupted)")
    rollouts: int = f(8, "completions from every step prefix (mc_hard, mc_soft, prover)")
    prover_policy: Optional[str] = f(None, "policy directory of the prover (prover kind); null = model.policy")
    prover_k: int = f(4, "the prover is best-of-K of prover_policy: value = 1 - (1 - p)^K")
    heldout_problems: int = f(100, "eval-split problems whose policy samples are oracle-labelled to judge PRMs")
    temperature: float = f(1.0, "sampling temperature of the labelled samples and of the completions")


@dataclass
class PrmConfig:
    path: Optional[str] = f(None, "PRM directory steprl search scores with (steprl train-prm writes run_dir/prm)")
    format: str = f("token_classification", "layout of the PRM at prm.path (as reward.sources[].format)")
    train_file: Optional[str] = f(
        None, "step-labelled JSONL to train on; null = run steprl label first and use label.kinds[0]"
    )
    heldout_file: Optional[str] = f(
        None, "oracle-labelled JSONL the PRM is judged on; null = the held-out file steprl label writes"
    )
    base: Optional[str] = f(None, "model the PRM starts from (HF directory); null = model.policy's backbone")
    val_fraction: float = f(0.1, "labelled rows held back to validate training settings (prm/val_loss, prm/val_auc)")
    epochs: int = f(3, "passes over the labelled steps")
    batch_size: int = f(32, "labelled solutions per optimizer step")
    lr: float = f(5e-4, "peak learning rate (AdamW, linear warm-up then cosine)")
    warmup_steps: int = f(20, "linear warm-up in optimizer steps")
    threshold: float = f(0.5, "a step scored below this is flagged wrong (first-error F1, rejection sampling)")


@dataclass
class SearchConfig:
    methods: list[str] = f(list(SEARCH_METHODS), f"test-time methods of steprl search: {_names(SEARCH_METHODS)}")
    budgets: list[int] = f([1, 4, 16, 64], "N: samples per problem (beam: width x expansions; mcts: simulations)")
    num_problems: int = f(200, "held-out problems (the eval split, eval's fixed set)")
    temperature: float = f(1.0, "sampling temperature of every method but greedy")
    aggregation: str = f(
        "min", "how step values make a solution's score in weighted, beam and mcts: product | min | last"
    )
    expansions: int = f(4, "beam: children per beam per step (width = N / expansions)")
    mcts_children: int = f(4, "mcts: children of a node before it is fully expanded")
    c_uct: float = f(1.0, "mcts: exploration constant of UCT")
    max_depth: int = f(12, "step-level methods stop after this many steps")


@dataclass
class RoleResources:
    num_cpus: float = f(0.25, "Ray CPUs reserved per actor of this role")
    num_gpus: float = f(0.0, "Ray GPUs reserved per actor of this role")


def _roles() -> dict[str, RoleResources]:
    return {r: RoleResources() for r in ROLES}


@dataclass
class ClusterConfig:
    address: Optional[str] = f(None, "Ray address to attach to ('auto' under ray job submit); null = start locally")
    num_cpus: Optional[int] = f(None, "CPUs of a locally started Ray (null = all)")
    placement_strategy: str = f("PACK", "placement group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD")
    roles: dict[str, RoleResources] = f(_roles, "resources per role; learner is per rank")
    threads_per_actor: int = f(1, "torch / OMP / BLAS threads in every actor")


@dataclass
class ExperimentConfig:
    run_dir: str = f("runs/default", "directory for config.yaml, metrics, checkpoints and summary.json")
    seed: int = f(0, "seed of everything (data order, sampling, init)")
    resume: bool = f(False, "continue from the newest checkpoint in run_dir")
    task: TaskConfig = f(TaskConfig, "the reasoning task")
    model: ModelConfig = f(ModelConfig, "model directories")
    sft: SFTConfig = f(SFTConfig, "supervised fine-tuning (steprl sft)")
    rollout: RolloutConfig = f(RolloutConfig, "generation")
    reward: RewardConfig = f(RewardConfig, "reward sources and transform")
    algo: AlgoConfig = f(AlgoConfig, "estimator and losses")
    learner: LearnerConfig = f(LearnerConfig, "DeepSpeed learner group")
    sync: SyncConfig = f(SyncConfig, "weight sync from the learner to the generators")
    eval: EvalConfig = f(EvalConfig, "held-out evaluation")
    train: TrainConfig = f(TrainConfig, "the RL loop")
    label: LabelConfig = f(LabelConfig, "step labels for PRM training (steprl label)")
    prm: PrmConfig = f(PrmConfig, "PRM training and judging (steprl train-prm), the PRM steprl search uses")
    search: SearchConfig = f(SearchConfig, "test-time search on held-out problems (steprl search)")
    cluster: ClusterConfig = f(ClusterConfig, "Ray cluster and placement")
