"""Reasoning tasks with verifiable answers (and, for arithmetic chains, oracle step labels)."""

from tasks.arithmetic import ArithmeticTask

# Task registry: config name -> class taking plain keyword arguments.
TASKS = {"arithmetic": ArithmeticTask}


def make_task(name: str, **kwargs):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name](**kwargs)
