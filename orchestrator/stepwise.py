"""Binds the pure search core (algo/search.py) to the cluster and the task.

algo.search sees only callbacks: `expand(nodes, n, one_step)` continues step prefixes, `score(nodes)` gives a
PRM value per step. Here `Expander` runs expand on the generator actors (generation from a prefix: each node's
steps follow the prompt, `stop=[step_delimiter]` ends a continuation after one more step) and counts the
tokens and rollouts it spends; `PrmScorer` runs a PRM of any layout (tasks.prm_formats); `Judge` tells a
node's answer and whether it is right, from the task's own checker. Labelling, search and the PRM's judging
all stand on these three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from algo.search import Node
from algo.seeding import derive_seed
from algo.trajectory import PromptRequest, Trajectory
from tasks.arithmetic import ANSWER_PREFIX, Problem
from tasks.datasets import TextProblem


def text_steps(text: str, delimiter: str) -> tuple[str, ...]:
    """Steps of a response text, each with its delimiter (a last unterminated piece is a step too)."""
    parts = text.split(delimiter)
    return tuple(p + delimiter for p in parts[:-1]) + ((parts[-1],) if parts[-1] else ())


@dataclass
class Expander:
    """algo.search's `expand` on the generator pool: one batched generation call per expand call.

    Samples are seeded by (seed, call number, node, sample): a rerun of the same search draws the same text.
    `is_final(step)` marks a step after which nothing may follow (the answer line), so a one-step
    expansion of it is not spent on an EOS alone."""

    pool: object  # orchestrator.generators.GeneratorPool
    requests: list[PromptRequest]  # one per problem: Node.problem indexes it
    delimiter: str
    temperature: float
    max_new_tokens: int
    seed: int
    is_final: Callable[[str], bool] = lambda step: False
    on_call: Callable[[int], None] = lambda total: None  # progress: a call of `total` sequences starts
    on_sample: Callable[[], None] = lambda: None  # progress: one sequence finished
    tokens: list[int] = field(init=False)  # generated tokens per problem
    rollouts: int = field(init=False, default=0)  # sequences generated (one per child)
    calls: int = field(init=False, default=0)
    node_tokens: dict[Node, int] = field(init=False, default_factory=dict)  # tokens generated for each child

    def __post_init__(self) -> None:
        self.tokens = [0] * len(self.requests)

    def __call__(self, nodes: list[Node], n: int, one_step: bool) -> list[list[Node]]:
        if not nodes:
            return []
        self.calls += 1
        requests = [
            replace(self.requests[node.problem], group_id=j, prefix="".join(node.steps), samples=None)
            for j, node in enumerate(nodes)
        ]
        sampling = {
            "n": n,
            "temperature": self.temperature,
            "top_p": 1.0,
            "max_tokens": self.max_new_tokens,
            "stop": [self.delimiter] if one_step else None,
            "seed": derive_seed(self.seed, "expand", self.calls),
        }
        children: list[list[Node | None]] = [[None] * n for _ in nodes]
        self.on_call(n * len(nodes))
        for _, traj in self.pool.stream(requests, sampling):  # type: ignore[attr-defined]
            j = traj.group_id
            child = children[j][traj.info["sample"]] = self._child(nodes[j], traj, one_step)
            self.node_tokens[child] = len(traj.response_ids)
            self.tokens[nodes[j].problem] += len(traj.response_ids)
            self.on_sample()
        self.rollouts += n * len(nodes)
        return [[c for c in row if c is not None] for row in children]

    def _child(self, node: Node, traj: Trajectory, one_step: bool) -> Node:
        new = text_steps(traj.response_text, self.delimiter)
        ended = (
            not one_step
            or traj.finish_reason == "length"
            or not new
            or not new[-1].endswith(self.delimiter)  # EOS right after the step
            or self.is_final(new[-1])
        )
        return Node(node.problem, node.steps + new, ended)


@dataclass
class Judge:
    """A node's final answer and its correctness, from the task's checker (oracle parse for arithmetic,
    math-verify for JSONL problems, whose answer for voting is the last non-empty line)."""

    problems: list

    def answer(self, node: Node) -> str | None:
        problem, text = self.problems[node.problem], "".join(node.steps)
        if isinstance(problem, Problem):
            from tasks.oracle import label_response

            return label_response(problem, text).answer
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else None

    def correct(self, node: Node) -> bool:
        problem, text = self.problems[node.problem], "".join(node.steps)
        if isinstance(problem, Problem):
            from tasks.oracle import label_response

            return label_response(problem, text).outcome
        if isinstance(problem, TextProblem):
            from tasks.datasets import check_answer

            return check_answer(text, problem.answer)
        raise TypeError(f"no checker for problems of type {type(problem).__name__}")


def arithmetic_final(step: str) -> bool:
    """The answer line of an arithmetic chain ends a solution."""
    return step.startswith(ANSWER_PREFIX)


# task.kind -> the step after which nothing may follow; other tasks end only at EOS or the length limit.
FINAL_STEP: dict[str, Callable[[str], bool]] = {"arithmetic": arithmetic_final}


def progress_expander(cfg, pool, requests: list[PromptRequest], temperature: float, progress, bar) -> Expander:
    """An Expander with the config's step delimiter, length limit, seed and final-step rule, whose calls
    advance the rich progress bar `bar`."""
    return Expander(
        pool,
        requests,
        cfg.rollout.step_delimiter,
        temperature,
        cfg.rollout.max_new_tokens,
        cfg.seed,
        is_final=FINAL_STEP.get(cfg.task.kind, lambda step: False),
        on_call=lambda total: progress.reset(bar, total=total),
        on_sample=lambda: progress.advance(bar),
    )


@dataclass
class PrmScorer:
    """algo.search's `score`: a PRM of any layout (tasks.prm_formats) on (question, steps without delimiter)."""

    prm: object  # a loaded tasks.prm_formats scorer
    questions: list[str]  # one per problem
    delimiter: str
    calls: int = field(init=False, default=0)
    scored: int = field(init=False, default=0)

    def __call__(self, nodes: list[Node]) -> list[list[float]]:
        self.calls += 1
        self.scored += len(nodes)
        items = [(self.questions[n.problem], [s.removesuffix(self.delimiter) for s in n.steps]) for n in nodes]
        return self.prm.score(items) if items else []  # type: ignore[attr-defined]


def load_prm(path: str, fmt: str, *, delimiter: str, dtype: str, device: str | None, trust_remote_code: bool):
    """A PRM scorer of layout `fmt` from `path`, on `device` (None: the GPU if any) in dtype `dtype`; the
    token_classification layout reads each step at the policy's step delimiter."""
    from transformers.utils import logging as hf_logging

    from engine.process import role_device, role_dtype
    from tasks.prm_formats import PRM_FORMATS

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per PRM load clutters our own bars
    dev, layout = role_device(device), PRM_FORMATS[fmt]
    options = {"separator": delimiter} if layout.uses_step_delimiter else {}
    return layout.load(
        path,
        dtype=role_dtype(dtype, dev),
        device=dev,
        trust_remote_code=trust_remote_code,
        batch_size=SCORE_BATCH,
        **options,
    )


SCORE_BATCH = 64  # solutions per PRM forward: tiny models on CPU gain little beyond this
