"""`steprl train`: the RL loop around orchestrator.step.train_step, with evaluation, checkpoints and a summary.

The driver validates the config, makes sure the base policy exists (SFT creates the committed default, or
any policy with model.sft_if_missing), starts or attaches to Ray, places the roles, then runs steps.
Data position = step index: the prompts of step s are drawn from a seed derived from (seed, s), and every
sample's sampling seed from (seed, s, prompt index, sample index), so a resumed run sees exactly the
prompts and seeds it would have seen. Actor output goes to run_dir/logs; the console keeps the bar.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import ray
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from algo import registry
from algo.seeding import derive_seed
from algo.trajectory import PromptRequest
from engine.process import prepare_process
from orchestrator.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from orchestrator.config import ModelConfig
from orchestrator.curriculum import curriculum_from_config
from orchestrator.data import eval_problems, prompt_requests, step_problems, task_from_config
from orchestrator.dynamic import fill_batch
from orchestrator.guided import guide_rollout, score_written
from orchestrator.metrics import MetricsLog, plot_curves, sample_records
from orchestrator.pipeline import Pipeline
from orchestrator.roles import Roles, placement_report, policy_dir_exists, start_roles
from orchestrator.rollout import Rollout
from orchestrator.rundir import logs_dir, open_run_dir, write_summary
from orchestrator.runtime import RoleError, init_ray
from orchestrator.step import StepSettings, publish_weights, score_rollout, stage_weights, train_step
from orchestrator.validate import ConfigError

console = Console()


def run_train(cfg: DictConfig, args=None) -> dict:
    t_start = time.time()
    run_dir = open_run_dir(cfg)
    prepare_process(cfg.cluster.threads_per_actor)
    policy_dir = ensure_policy(cfg)
    task = task_from_config(cfg)
    skipped = {f"data/{split}_rows_skipped": getattr(task, f"{split}_skipped", 0) for split in ("train", "eval")}
    if any(skipped.values()):  # task.skip_bad_rows: counted and said, never silently dropped
        console.print(f"[yellow]skipped bad or overlong JSONL rows: {skipped}[/]")
    if cfg.train.max_staleness and cfg.algo.off_policy == "recompute":
        console.print(
            f"[yellow]train.max_staleness={cfg.train.max_staleness} with algo.off_policy=recompute: nothing corrects "
            "for the samples' lag (on the CPU demo this stopped learning); consider algo.off_policy=decoupled[/]"
        )
    started_ray = not ray.is_initialized()
    init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.threads_per_actor)
    updates = cfg.train.steps * cfg.learner.ppo_epochs * cfg.learner.mini_batches
    console.print(
        f"[bold]steprl train[/] {cfg.algo.estimator} on {cfg.task.kind}: starting roles "
        f"(actor logs in {logs_dir(run_dir)}) ..."
    )
    roles = start_roles(cfg, policy_dir, total_updates=updates, run_dir=run_dir)
    try:
        placement = placement_report(roles, cfg.train.timeout_s)
        summary = _loop(cfg, roles, task, run_dir)
        summary.update(placement=placement, **skipped)
    finally:
        roles.shutdown()
        if started_ray:
            ray.shutdown()
    summary["time_s"] = time.time() - t_start
    write_summary(run_dir, summary)
    print_summary(summary)
    return summary


def _loop(cfg: DictConfig, roles: Roles, task, run_dir: str) -> dict:
    timeout = cfg.train.timeout_s
    state: dict[str, Any] = {"step": 0, "version": 0, "samples": 0, "data_position": 0}
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt:
        state = load_checkpoint(ckpt, roles, timeout)
        # generators restart from the learner's weights
        publish_weights(roles, state["version"], timeout, cfg.sync.method)
        console.print(f"resumed from {ckpt} at step {state['step']}, version {state['version']}")
    curriculum = curriculum_from_config(cfg, task)  # task.curriculum; off: every step draws from `task`
    curriculum.load(state)
    resume_step = state["step"] if ckpt else None
    log = MetricsLog(run_dir, resume_from_step=resume_step)
    samples_log = MetricsLog(run_dir, resume_from_step=resume_step, name="samples.jsonl", tensorboard=False)
    problems = eval_problems(cfg, task)
    before = state.get("eval_before") or evaluate(cfg, roles, problems, task.prompt_text)
    state["eval_before"] = before
    if not ckpt:
        log.log({"step": 0, "policy_version": 0, "samples": 0, **before})
    progress = Progress(
        TextColumn("[bold]RL"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    pipeline = make_pipeline(cfg, roles, task, cfg.train.max_staleness, state["version"], task_of=curriculum.task)
    with progress, closing(pipeline):
        bar = progress.add_task("rl", total=cfg.train.steps, completed=state["step"], info="")
        masked_streak = 0
        while state["step"] < cfg.train.steps:
            step = state["step"] + 1
            evaluate_now = step == cfg.train.steps or (cfg.train.eval_every and step % cfg.train.eval_every == 0)
            checkpoint_now = step == cfg.train.steps or (
                cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0
            )
            check_now = curriculum.due(step)  # a barrier too: the next batch is drawn at the level it decides
            s = settings(cfg, roles, step, prefetch=not (evaluate_now or checkpoint_now or check_now))
            metrics, trajectories = train_step(roles, s, pipeline, step, state["version"])
            state.update(
                step=step,
                version=metrics["policy_version"],
                # every sample generated counts, also those dynamic sampling dropped (samples_to_target)
                samples=state["samples"] + metrics.get("dynamic/samples_generated", metrics["samples_step"]),
                data_position=step,
            )
            row = {
                "step": step,
                "policy_version": state["version"],
                "samples": state["samples"],
                "data/position": step - 1,
                "data/prompts_hash": prompts_hash(step_requests(cfg, curriculum.task(), step)),
                **curriculum.metrics(),  # the level this step's prompts were drawn at
                **metrics,
            }
            if evaluate_now or check_now:
                caught_up = pipeline.catch_up(state["version"])  # evaluate the newest weights
                row.update(caught_up, **{"timing/sync_s": row["timing/sync_s"] + caught_up.get("timing/sync_s", 0.0)})
            if evaluate_now:
                row.update(evaluate(cfg, roles, problems, task.prompt_text))
            if check_now:  # greedy accuracy only (k=0): the decision needs no pass@k
                row.update(curriculum.check(lambda val: evaluate(cfg, roles, val, task.prompt_text, k=0)))
            state.update(curriculum.state())  # a checkpoint resumes at the level just decided
            log.log(row)
            samples_log.log(*sample_records(step, trajectories))
            masked_streak = check_masked(
                masked_streak, metrics, cfg.reward.max_masked_fraction, cfg.reward.max_masked_steps
            )
            if checkpoint_now:
                save_checkpoint(run_dir, roles, state, cfg.train.keep_checkpoints, timeout)
            progress.update(bar, advance=1, info=_bar_info(row))
    log.close()
    samples_log.close()
    after = next((r for r in reversed(log.rows) if "eval/accuracy" in r), before)
    roles.learner.save_hf(os.path.join(run_dir, "policy"))
    plot = plot_curves(log.rows, os.path.join(run_dir, "curves.png"), title=f"{cfg.algo.estimator}, seed {cfg.seed}")
    return {
        "eval/accuracy_before": before["eval/accuracy"],
        "eval/accuracy_after": after["eval/accuracy"],
        "eval/step_accuracy_before": before.get("eval/step_accuracy"),
        "eval/step_accuracy_after": after.get("eval/step_accuracy"),
        "eval/pass@k_before": before.get("eval/pass@k"),
        "eval/pass@k_after": after.get("eval/pass@k"),
        "samples_total": state["samples"],
        "steps": state["step"],
        "policy_version": state["version"],
        "estimator": cfg.algo.estimator,
        "seed": cfg.seed,
        "plot": plot,
        "backend/generator": "vllm",
        "backend/learner": "deepspeed",
    }


def check_masked(streak: int, metrics: dict, max_fraction: float, max_steps: int) -> int:
    """The new count of consecutive steps with too many masked samples; raises when it reaches max_steps.
    A broken reward source masks every sample: without this the run would train on nothing forever."""
    streak = streak + 1 if metrics["samples/masked"] > max_fraction * metrics["samples_step"] else 0
    if streak >= max_steps:
        raise RoleError(
            f"reward: more than {max_fraction:.0%} of the samples were masked for {streak} steps "
            f"in a row (reward.max_masked_fraction / max_masked_steps); last error: "
            f"{metrics.get('reward/first_error')}"
        )
    return streak


def prompts_hash(requests: list[PromptRequest]) -> str:
    """Short digest of a step's prompts: lets anyone check that a resumed run saw the same data."""
    return hashlib.sha1("\n".join(r.text for r in requests).encode()).hexdigest()[:12]


def make_pipeline(
    cfg: DictConfig,
    roles: Roles,
    task,
    max_staleness: int,
    generator_version: int,
    task_of: Callable[[], Any] | None = None,
) -> Pipeline:
    """The rollouts of the run's steps, generated up to max_staleness versions ahead (orchestrator/pipeline.py).
    task_of() (default: `task`) gives the task a step's prompts are drawn from, read when the step is generated:
    a curriculum's current level (orchestrator/curriculum.py)."""
    task_now = task_of or (lambda: task)
    return Pipeline(
        max_staleness,
        rollout_of=lambda step: step_rollout(cfg, roles, task_now(), step),
        stage=lambda version: stage_weights(roles, version, cfg.train.timeout_s, cfg.sync.method),
        generator_version=generator_version,
    )


def step_rollout(cfg: DictConfig, roles: Roles, task, step: int) -> Rollout:
    """The scored batch of train step `step`. With rollout.dynamic_sampling, groups without signal are replaced
    by fresh prompts, drawn from seeds derived from (seed, step, round) so a resumed run draws them again
    (orchestrator/dynamic.py). With algo.guided.enable, groups that still all failed then get a gold sample in
    place of their last one (orchestrator/guided.py)."""
    s = settings(cfg, roles, step)
    issued: list[PromptRequest] = []  # every request scored, with the group ids the batch has

    def score(reqs: list[PromptRequest]) -> Rollout:
        issued.extend(reqs)
        return score_rollout(roles, s, reqs)

    def extra_requests(round_: int, n: int) -> list[PromptRequest]:
        return prompt_requests(task, task.sample(n, "train", seed=derive_seed(cfg.seed, "dynamic", step, round_)))

    requests = step_requests(cfg, task, step)
    if not cfg.rollout.dynamic_sampling:
        rollout = score(requests)
    else:
        rollout = fill_batch(
            score,
            requests,
            extra_requests,
            want_groups=cfg.rollout.prompts_per_step,
            max_rounds=cfg.rollout.dynamic_max_rounds,
            use_steps=registry.ESTIMATORS[cfg.algo.estimator].needs_step_rewards,
        )
    if not s.guided:
        return rollout
    if roles.gold_writer is None:
        raise RuntimeError("algo.guided.enable, but the roles were started without a gold writer")
    # after dynamic sampling: a gold sample goes only to a group of the final batch that still all failed
    return guide_rollout(rollout, issued, roles.gold_writer.trajectory, lambda trajs: score_written(roles, s, trajs))


def step_requests(cfg: DictConfig, task, step: int) -> list[PromptRequest]:
    """The prompts of train step `step` (1-based): data position step - 1."""
    return prompt_requests(task, step_problems(cfg, task, step - 1))


def settings(cfg: DictConfig, roles: Roles, step: int, prefetch: bool = False) -> StepSettings:
    a, r = cfg.algo, cfg.rollout
    return StepSettings(
        sampling={
            "n": r.group_size,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_tokens": r.max_new_tokens,
            "seed": derive_seed(cfg.seed, "step", step),
        },
        estimator=a.estimator,
        estimator_params={k: a[k] for k in registry.ESTIMATORS[a.estimator].params},
        whiten=a.whiten,
        kl_coef=a.kl_coef,
        kl_estimator=a.kl_estimator,
        kl_in=a.kl_in,
        sft_coef=a.sft_coef,
        train_policy=step > cfg.learner.critic_warmup_steps,
        pad_id=roles.pad_id,
        timeout_s=cfg.train.timeout_s,
        sync_method=cfg.sync.method,
        reward_batch=cfg.reward.batch_size,
        prefetch=prefetch,
        critic_weights={c.reward: c.weight for c in a.critics},
        guided=a.guided.enable,
    )


def evaluate(cfg: DictConfig, roles: Roles, problems, prompt_fn=None, k: int | None = None) -> dict:
    """Held-out evaluation with the generators' current weights (greedy accuracy, pass@k, step accuracy).
    prompt_fn (the task's prompt_text) makes eval prompts match training prompts, chat template included.
    k: samples for pass@k (default eval.k; 0 = greedy only)."""
    from orchestrator.evaluate import evaluate_policy

    def generate_fn(prompts: list[str], n: int, temperature: float) -> list[list[str]]:
        # The same seeds at every evaluation: the curve moves with the policy, not with the noise.
        sampling = {
            "n": n,
            "temperature": temperature,
            "max_tokens": cfg.rollout.max_new_tokens,
            "seed": derive_seed(cfg.seed, "eval"),
        }
        reqs = [PromptRequest(str(i), i, p) for i, p in enumerate(prompts)]
        texts: dict[int, dict[int, str]] = {}
        for _, t in roles.generators.stream(reqs, sampling):
            texts.setdefault(t.group_id, {})[t.info["sample"]] = t.response_text
        return [[texts[i][k] for k in range(n)] for i in range(len(prompts))]

    out = evaluate_policy(
        None,
        problems,
        k=cfg.eval.k if k is None else k,
        temperature=cfg.eval.temperature,
        max_new_tokens=cfg.rollout.max_new_tokens,
        seed=cfg.seed,
        generate_fn=generate_fn,
        prompt_fn=prompt_fn,
    )
    out["timing/eval_s"] = out.pop("time_s")  # a wall-clock key of a metrics row: under timing/
    return out


def ensure_policy(cfg: DictConfig) -> str:
    """The base policy directory. A missing one is an error naming the path, unless it is the committed
    default (re-created by SFT) or model.sft_if_missing is set: a typo must not start an SFT run."""
    if policy_dir_exists(cfg.model.policy):
        return os.path.abspath(cfg.model.policy)
    is_default = os.path.abspath(cfg.model.policy) == os.path.abspath(ModelConfig.policy)
    if not (cfg.model.sft_if_missing or is_default):
        raise ConfigError(
            f"model.policy: no model directory (config.json) at {cfg.model.policy!r}; fix the "
            "path, or set model.sft_if_missing=true to create a tiny policy there by SFT"
        )
    console.print(f"[yellow]no policy at {cfg.model.policy}: running SFT first[/]")
    from orchestrator.sft_command import sft_from_config

    return sft_from_config(cfg, os.path.join(cfg.run_dir, "sft"))["policy_dir"]


def _bar_info(row: dict) -> str:
    acc = row.get("oracle/accuracy")
    parts = [f"v{row['policy_version']}", f"samples {row['samples']}"]
    if acc is not None:
        parts.append(f"train acc {acc:.2f}")
    if "eval/accuracy" in row:
        parts.append(f"eval acc {row['eval/accuracy']:.3f}")
    parts.append(f"{row['timing/step_s']:.1f}s/step")
    return "  ".join(parts)


def print_summary(summary: dict) -> None:
    table = Table(title="steprl train: before / after")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in ("eval/accuracy", "eval/step_accuracy", "eval/pass@k"):
        b, a = summary.get(f"{key}_before"), summary.get(f"{key}_after")
        table.add_row(key, _fmt(b), _fmt(a))
    table.add_row("samples", "", str(summary["samples_total"]))
    table.add_row("time (s)", "", f"{summary['time_s']:.0f}")
    console.print(table)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"
