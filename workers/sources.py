"""The reward sources a config can name (`reward.sources[].name`): the one list, with what each gives and needs.

Torch-free, so config validation reads it before anything heavy is imported; workers/reward.py builds each
source by name from this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    gives: str  # "step": a probability per step; "outcome": one number per response
    needs_path: bool = False  # a model directory (reward.sources[].path)
    task_kinds: tuple[str, ...] | None = None  # the task kinds it can judge; None: any


SOURCES: dict[str, Source] = {
    "oracle": Source("step", task_kinds=("arithmetic",)),  # checks every operation of an arithmetic chain
    "outcome": Source("outcome"),  # the final answer against the gold answer
    "prm": Source("step", needs_path=True),  # a learned process reward model
}

# The input layouts a prm source can read (`reward.sources[].format`), implemented by tasks/prm_formats.py
# (PRM_FORMATS there has exactly these keys): ours, Math-Shepherd's step tag, Qwen2.5-Math-PRM's separator.
PRM_FORMATS = ("token_classification", "step_tag", "separator_head")

# Where a checkpoint holds the state of a prm source that learns online (workers/online_prm.py).
ONLINE_PRM_DIR = "prm_online"
