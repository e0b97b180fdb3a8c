"""Oracle labels for arithmetic-chain responses: three of the four meanings of a step reward.

``label_response(problem, response_text)`` never raises on model output. It returns, per step:

- ``step_correct`` (PRM800K meaning): this step's own operation is right *given the values it uses*.
  A step uses what the previous well-formed step wrote: its result and the remaining chain it copied.
  So ``6-8=8 +4`` after a wrong ``1+5=7 -8+4`` is wrong (it does not use the 7), while ``7-8=9 +4`` is
  right: a step built on an earlier wrong result can still be right.
- ``prefix_correct``: every step so far is right.
- ``strict_step``: this step is right *against the true state*: its input value is the true running
  value, it applies the true next operation, copies the true rest of the chain and computes the right
  result. It neither builds on an earlier error (``7-8=9 +4`` above is not strict) nor is it blamed for
  one it repairs (``6-8=8 +4`` above is strict). The k-th operation line is compared with the true state
  after k-1 operations, so a strict operation line is the gold line k (numbers read as values); a skipped or repeated
  operation puts the lines after it off their gold positions. An answer line is strict when all true
  operations are done and it states the true final value.
- ``outcome``: the last step is a complete answer line whose value equals the gold answer.

So ``prefix_correct`` implies ``strict_step`` (all steps right on the values they use means those values
are the true ones), but neither ``strict_step`` nor ``step_correct`` implies the other. The fourth meaning
(``value``: probability that a rollout from this prefix ends correct, Math-Shepherd) is a property of a
policy, not of a text; it comes from Monte-Carlo rollouts, not from this oracle.

Steps are the response's lines, split on "\\n": the k-th line is the k-th step span of the token-level
segmentation. A last line without its "\\n" is a truncated step; it is labelled wrong (unfinished) and
sets ``truncated``. Unparseable lines are wrong and leave the state unchanged for the steps after them;
steps after the answer line are wrong (extra). These rules hold for every meaning. Missing steps show as
``first_error == num_steps``; ``first_error`` always refers to ``step_correct``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.arithmetic import ANSWER_PREFIX, STEP_DELIMITER, Problem, apply_op

# Numbers are capped at 18 digits: longer digit runs are garbage (and int() of huge strings can raise).
_NUM = r"(\d{1,18})"
_LINE_RE = re.compile(_NUM + r"([+\-*])" + _NUM + "=" + _NUM + r"(?: ((?:[+\-*]\d{1,18})+))?")
_REST_RE = re.compile(r"([+\-*])" + _NUM)
_ANSWER_RE = re.compile(re.escape(ANSWER_PREFIX) + _NUM)


# What an oracle step reward can mean (reward.meaning): the per-step label fields of Labels. The fourth
# meaning, "value" (Monte-Carlo rollouts from each step prefix, Math-Shepherd), is not an oracle label: it
# needs the PRM lifecycle (label prefixes with rollouts, train a PRM on them), which steprl lacks yet.
STEP_MEANINGS = ("step_correct", "prefix_correct", "strict_step")


@dataclass
class Labels:
    step_correct: list[bool]  # one per step (line)
    prefix_correct: list[bool]  # one per step: all steps up to and including this one are right
    outcome: bool  # final answer right
    format_ok: bool  # exactly the gold shape: num_ops operation lines, answer line, all terminated
    num_steps: int  # number of lines, the unterminated last one included
    first_error: int | None  # 0-based index of the first wrong step; num_steps if steps are missing
    answer: str | None  # value of the last answer line seen, if any
    truncated: bool  # the last line has no "\n"
    reason: str  # first format problem, "" when format_ok
    # one per step: right against the true state (see the module docstring). Last and defaulted so that
    # outcome-only Labels (tasks.datasets.label_text_answer, no oracle: empty step lists) need not name it.
    strict_step: list[bool] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_lines(response_text: str) -> tuple[list[str], bool]:
    """Lines of a response (without delimiters) and whether the last one is unterminated."""
    lines = response_text.split(STEP_DELIMITER)
    if lines[-1] == "":
        return lines[:-1], False
    return lines, True


def _judge_line(
    line: str, value: int, remaining: list[tuple[str, int]], modulus: int
) -> tuple[str, bool, int, list[tuple[str, int]]]:
    """Judge one line against a state (the used one, or the true one for strict_step).
    Returns (kind, correct, new_value, new_remaining)."""
    m = _LINE_RE.fullmatch(line)
    if m is not None:
        a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        rest = [(o, int(x)) for o, x in _REST_RE.findall(m.group(5) or "")]
        correct = (
            bool(remaining)
            and a == value
            and (op, b) == remaining[0]
            and r == apply_op(op, a, b, modulus)
            and rest == remaining[1:]
        )
        return "op", correct, r, rest
    m = _ANSWER_RE.fullmatch(line)
    if m is not None:
        return "answer", (not remaining and int(m.group(1)) == value), value, remaining
    return "garbage", False, value, remaining


def label_response(problem: Problem, response_text: str) -> Labels:
    """Oracle labels of any response text for ``problem`` (never raises on malformed text)."""
    lines, truncated = split_lines(response_text)
    value = problem.operands[0]
    remaining = list(zip(problem.ops, problem.operands[1:], strict=True))
    # The true state runs alongside the used one: it advances by one gold operation per operation line,
    # whatever that line wrote, so the k-th operation line is judged against the truth after k-1 operations.
    true_value, true_remaining = value, list(remaining)
    step_correct: list[bool] = []
    strict_step: list[bool] = []
    reason, answer, answered, n_op_lines = "", None, False, 0

    for k, line in enumerate(lines):
        kind, correct, value, remaining = _judge_line(line, value, remaining, problem.modulus)
        _, strict, _, _ = _judge_line(line, true_value, true_remaining, problem.modulus)
        if kind == "op" and true_remaining:
            op, b = true_remaining.pop(0)
            true_value = apply_op(op, true_value, b, problem.modulus)
        unterminated = truncated and k == len(lines) - 1
        problem_here = (
            "truncated step"
            if unterminated
            else "step after the answer line"
            if answered
            else "unparseable step"
            if kind == "garbage"
            else ""
        )
        if problem_here and not reason:
            reason = f"{problem_here} {k + 1}: {line[:40]!r}"
        step_correct.append(correct and not answered and not unterminated)
        strict_step.append(strict and not answered and not unterminated)
        n_op_lines += kind == "op"
        if kind == "answer":
            answer, answered = line[len(ANSWER_PREFIX) :], True

    if not reason and not answered:
        reason = "no answer line"
    if not reason and n_op_lines != problem.num_ops:
        reason = f"{n_op_lines} operation steps, expected {problem.num_ops}"
    last_is_answer = bool(lines) and not truncated and _ANSWER_RE.fullmatch(lines[-1]) is not None
    outcome = last_is_answer and int(lines[-1][len(ANSWER_PREFIX) :]) == int(problem.answer)

    prefix_correct, ok = [], True
    for c in step_correct:
        ok = ok and c
        prefix_correct.append(ok)
    wrong = [k for k, c in enumerate(step_correct) if not c]
    # All present steps right but no answer line: the first missing step is the first error.
    first_error = wrong[0] if wrong else (None if answered else len(lines))
    return Labels(
        step_correct=step_correct,
        prefix_correct=prefix_correct,
        outcome=outcome,
        format_ok=reason == "",
        num_steps=len(lines),
        first_error=first_error,
        answer=answer,
        truncated=truncated,
        reason=reason,
        strict_step=strict_step,
    )
