"""Which problems the loop sees: the task from the config, the prompts of each step, the eval set.

Data position is the step index: step s draws its prompts with a seed derived from (seed, s), so a
resumed run continues with exactly the prompts it would have seen, without replaying a sampler.
"""

from __future__ import annotations

from omegaconf import DictConfig

# eval.split -> the task's split it evaluates on. "test" is the held-out split every reported number is
# measured on (the tasks call it "eval"); "validation" is for choosing settings (learning rates, transforms,
# stopping), so that the test numbers are not chosen on.
EVAL_SPLITS = {"test": "eval", "validation": "validation"}
# The seed of the fixed eval and validation sets: the same problems for every run of the same task settings.
EVAL_SET_SEED = 12345


def task_from_config(cfg: DictConfig, max_steps: int | None = None):
    """The config's task (tasks.TASKS registry), built from plain values. max_steps overrides task.max_steps
    (a curriculum level, orchestrator/curriculum.py)."""
    from orchestrator.validate import plain_dict
    from tasks import TaskSettings, make_task

    values = plain_dict(cfg.task)
    values.pop("curriculum", None)  # the loop's schedule of max_steps, not a setting of one task
    if max_steps is not None:
        values["max_steps"] = max_steps
    return make_task(
        TaskSettings(
            **values,
            seed=cfg.seed,
            tokenizer_dir=cfg.model.policy,
            max_model_len=cfg.rollout.max_model_len,
            trust_remote_code=cfg.model.trust_remote_code,
            validation_percent=cfg.eval.validation_percent,
            validation_path=cfg.eval.validation_path,
        )
    )


def prompt_requests(task, problems: list) -> list:
    """One PromptRequest per problem (group_id = its index): the policy's prompt (chat template included,
    task.prompt_text), the gold answer, the question as written (task.question_text) for the PRM, and the gold
    solution (task.solution_text; "" for a task without one, e.g. JSONL) for a guided sample."""
    from algo.trajectory import PromptRequest

    solution = getattr(task, "solution_text", None)
    return [
        PromptRequest(
            p.prompt_id,
            g,
            task.prompt_text(p),
            str(p.answer),
            question=task.question_text(p),
            solution=solution(p) if solution is not None else "",
        )
        for g, p in enumerate(problems)
    ]


def step_problems(cfg: DictConfig, task, position: int) -> list:
    """The prompts of the step at data position `position` (0-based)."""
    return task.sample(cfg.rollout.prompts_per_step, "train", seed=cfg.seed * 1_000_003 + position)


def eval_problems(cfg: DictConfig, task, n: int | None = None) -> list:
    """The fixed set of split eval.split (same for every run with the same task settings): its first n
    problems (default eval.num_problems; a larger n extends the same stream)."""
    return task.sample(cfg.eval.num_problems if n is None else n, EVAL_SPLITS[cfg.eval.split], seed=EVAL_SET_SEED)
