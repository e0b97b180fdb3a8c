"""Gold arithmetic solutions with one subtle inserted error: labelled data for training a PRM.

As in the "corrupt" labelling of the PRM literature, a correct solution gets one wrong step, and the
steps after it continue CONSISTENTLY from that step's result: each later operation is computed correctly
on the values it uses, the rest of the chain is copied correctly, and the answer line states the value
reached. So the error is visible only in the corrupted step itself (never in the format), and the oracle
(tasks.oracle) labels a corrupted solution as follows, for the corrupted step s:

- steps before s: right in every meaning (they are the gold lines);
- step s: wrong in every meaning, and ``first_error == s``;
- steps after s: ``step_correct``, but neither ``prefix_correct`` nor ``strict_step``;
- ``outcome`` False, ``format_ok`` True.

Kinds of error (``CORRUPTIONS``, name -> the candidate edits of one step):

- ``copy``: the left operand the step copies from the line above (from the prompt for step 0) is
  another value, and the step computes correctly with it;
- ``result``: the step's result is another value;
- ``operator``: the step applies another operator, and computes its result with it.

Decisions:

- A changed value differs from the right one modulo the modulus, so the oracle sees the step as wrong
  and its result as really different; the replacement is drawn uniformly with the caller's rng.
- The error never vanishes later. With "+" and "-" every step keeps the difference from the true value,
  but "*" can multiply it away (a later ``*0``, or a zero divisor: ``5*2 = 0`` mod 10); the chain would
  then rejoin the truth, its later steps be strict and its answer right. Such edits are never drawn, so
  the labels above are guaranteed, ``outcome`` False included.
- The step is drawn uniformly among the operation steps (not the answer line) where the kind has an edit
  with a lasting error. For ``copy`` and ``result`` on "+"/"-" chains that is every step; ``operator``
  skips steps whose operand makes the swap a no-op (``+5`` and ``-5`` agree mod 10, as ``+0`` and ``-0``).
- The other operators of ``operator`` come from ``operators`` (pass the task's set, e.g.
  ``ArithmeticTask.operators``), by default the ones the problem itself uses. When the kind has no
  lasting edit at any step (a problem using a single operator, by default; or ``copy`` on ``7*0=``), the
  ``result`` kind is used instead, which always has one, and ``Corrupted.kind`` says so. We prefer this
  to inventing an operator the task never shows, which a PRM would learn to spot by its mere presence.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

from tasks.arithmetic import (
    ANSWER_PREFIX,
    OPERATORS,
    STEP_DELIMITER,
    Problem,
    apply_op,
    rest_text,
    solution_steps,
)


@dataclass(frozen=True)
class Corrupted:
    """A corrupted solution: the whole response text (every line ends with "\\n", as solution_text
    writes it), the 0-based index of the corrupted step and the kind of error put in it."""

    text: str
    step: int
    kind: str


@dataclass(frozen=True)
class Edit:
    """What a corrupted step writes where the gold line has its left operand, operator and result."""

    a: int
    op: str
    result: int


@functools.lru_cache(maxsize=256)  # asked for every candidate edit of every step
def true_values(problem: Problem) -> tuple[int, ...]:
    """The running values of the gold solution: values[k] is the left operand of step k (values[0] is the
    first operand as written), values[num_ops] the answer."""
    values = [problem.operands[0]]
    for op, b in zip(problem.ops, problem.operands[1:], strict=True):
        values.append(apply_op(op, values[-1], b, problem.modulus))
    return tuple(values)


def _copy_edits(problem: Problem, step: int, operators: str) -> list[Edit]:
    a, op, b, m = true_values(problem)[step], problem.ops[step], problem.operands[step + 1], problem.modulus
    return [Edit(x, op, apply_op(op, x, b, m)) for x in range(m) if x != a % m]


def _result_edits(problem: Problem, step: int, operators: str) -> list[Edit]:
    values = true_values(problem)
    return [Edit(values[step], problem.ops[step], r) for r in range(problem.modulus) if r != values[step + 1]]


def _operator_edits(problem: Problem, step: int, operators: str) -> list[Edit]:
    a, b = true_values(problem)[step], problem.operands[step + 1]
    return [Edit(a, o, apply_op(o, a, b, problem.modulus)) for o in operators if o != problem.ops[step]]


# Every function lists all edits of one step; corrupt_solution keeps those whose error lasts.
CORRUPTIONS: dict[str, Callable[[Problem, int, str], list[Edit]]] = {
    "copy": _copy_edits,
    "result": _result_edits,
    "operator": _operator_edits,
}
FALLBACK_KIND = "result"  # always has a lasting edit (at the last step) when modulus >= 2


def continuation(problem: Problem, step: int, result: int) -> list[int]:
    """The values a consistent continuation uses after ``step`` wrote ``result``: [result, ..., answer]."""
    values = [result]
    for op, b in zip(problem.ops[step + 1 :], problem.operands[step + 2 :], strict=True):
        values.append(apply_op(op, values[-1], b, problem.modulus))
    return values


def lasting(problem: Problem, step: int, result: int) -> bool:
    """Whether an error at ``step`` giving ``result`` stays: no later value is the true one, answer included."""
    return all(
        u != v for u, v in zip(continuation(problem, step, result), true_values(problem)[step + 1 :], strict=True)
    )


def lasting_edits(problem: Problem, kind: str, operators: str) -> dict[int, list[Edit]]:
    """Step -> its edits of this kind whose error lasts; steps without any are left out."""
    out: dict[int, list[Edit]] = {}
    for step in range(problem.num_ops):
        edits = [e for e in CORRUPTIONS[kind](problem, step, operators) if lasting(problem, step, e.result)]
        if edits:
            out[step] = edits
    return out


def _op_line(problem: Problem, step: int, a: int, op: str, result: int) -> str:
    # The same line shape as tasks.arithmetic.solution_steps: result, then the rest of the chain.
    rest = rest_text(problem.ops[step + 1 :], problem.operands[step + 2 :])
    return f"{a}{op}{problem.operands[step + 1]}={result}" + (f" {rest}" if rest else "")


def render(problem: Problem, step: int, edit: Edit) -> str:
    """The gold lines before ``step``, the edited line, then the consistent continuation and its answer."""
    lines = solution_steps(problem)[:step]
    lines.append(_op_line(problem, step, edit.a, edit.op, edit.result))
    values = continuation(problem, step, edit.result)
    for k in range(step + 1, problem.num_ops):
        lines.append(_op_line(problem, k, values[k - step - 1], problem.ops[k], values[k - step]))
    lines.append(f"{ANSWER_PREFIX}{values[-1]}")
    return "".join(line + STEP_DELIMITER for line in lines)


def corrupt_solution(
    problem: Problem, rng: random.Random, kind: str | None = None, *, operators: str | None = None
) -> Corrupted:
    """The gold solution of ``problem`` with one lasting error of ``kind`` (None: a random kind among
    those possible here). ``operators``: the operators the ``operator`` kind may swap in (default: the
    problem's own). Raises ValueError for an unknown kind or operator."""
    if kind is not None and kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption kind {kind!r}; valid kinds: {', '.join(CORRUPTIONS)}")
    if operators is None:
        operators = "".join(dict.fromkeys(problem.ops))  # in order of appearance: deterministic
    bad = sorted(set(operators) - set(OPERATORS))
    if bad:
        raise ValueError(f"unknown operator(s) {bad} in operators={operators!r}; known: {sorted(OPERATORS)}")
    names = list(CORRUPTIONS) if kind is None else [kind, FALLBACK_KIND]
    sites = {name: lasting_edits(problem, name, operators) for name in dict.fromkeys(names)}
    possible = [name for name in sites if sites[name]]
    if not possible:  # only when modulus < 2: every value is the same, no error can exist
        raise ValueError(f"no error can be inserted into {problem.prompt!r} modulo {problem.modulus}")
    kind = rng.choice(possible) if kind is None else possible[0]  # possible[0]: the kind asked, or the fallback
    step = rng.choice(sorted(sites[kind]))
    edit = rng.choice(sites[kind][step])
    return Corrupted(render(problem, step, edit), step, kind)
