"""The one type every role shares: a sampled response cut into reasoning steps.

A trajectory is created by a generator (tokens, behaviour log-probs, step spans, policy version) and
completed by the reward worker (step_rewards, outcome_reward). It holds plain Python values only, so it
crosses Ray's object store cheaply and algo/ stays free of any runtime import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trajectory:
    uid: str  # unique sample id, e.g. "s3-p17-2" (step 3, prompt 17, sample 2)
    prompt_id: str  # id of the task problem this answers
    group_id: int  # samples of the same prompt in the same batch share it
    policy_version: int  # version of the weights that sampled it
    prompt_ids: list[int]
    response_ids: list[int]
    behavior_logprobs: list[float]  # behaviour log-prob of each response token
    finish_reason: str  # "stop" (eos / stop string) or "length" (truncated)
    step_spans: list[tuple[int, int]]  # [start, end) token ranges in response_ids, one per step
    prompt_text: str = ""  # the text the policy was prompted with (chat template included)
    response_text: str = ""
    answer: str = ""  # gold answer the outcome verifier checks against
    question: str = ""  # the question as written, before any chat template (the PRM's input); "" = prompt_text
    step_rewards: list[float] | None = None  # one per step, filled by the reward worker
    outcome_reward: float | None = None
    sample_valid: bool = True  # False when a reward source failed: the sample is masked, not zeroed
    info: dict[str, Any] = field(default_factory=dict)  # oracle labels and other diagnostics (never used as reward)

    @property
    def num_steps(self) -> int:
        return len(self.step_spans)


@dataclass
class PromptRequest:
    """One prompt to sample a group of responses for."""

    prompt_id: str
    group_id: int  # index of the prompt in its step: part of every sample's seed
    text: str
    answer: str = ""  # gold answer (for the outcome verifier)
    question: str = ""  # the question before any chat template, passed on to the reward sources; "" = text
    samples: tuple[int, ...] | None = None  # sample indices to draw; None: 0..n-1 (a re-issue asks for fewer)
    # Steps already written (generation from a prefix: labelling and search continue a partial solution).
    # Tokenized apart from the prompt, as the policy's own steps were; the response holds only what follows.
    prefix: str = ""
    # The task's gold solution (its solution_text; "" when the task has none): what a guided sample of this group
    # says (algo.guided, orchestrator/guided.py). Never sent to the policy.
    solution: str = ""
