"""Synthetic arithmetic chains: the task whose every step has a known ground truth.

A problem is a left-to-right chain such as ``1+5-8+4=`` evaluated modulo ``modulus`` (10: single digits).
The gold solution does one operation per line and writes the rest of the chain after the result, so
each result sits right after its own operands. We chose it because a tiny model learns this "local"
format, while with a "rewrite the remaining expression" format our tiny policy stayed at 12% accuracy:

    1+5=6 -8+4
    6-8=8 +4
    8+4=2
    A2

Every line ends with the step delimiter "\\n"; the response then ends with EOS. The answer line is the
last step. A chain of n operations therefore has n + 1 steps.

Train, eval (the held-out test split) and validation splits are disjoint by construction: a stable hash
(sha256) of the prompt string puts every prompt in one bucket of 100, and the bucket decides the split, so no
eval or validation prompt can ever be sampled for training, whatever the seed. Buckets below eval_percent are
eval, the next validation_percent are validation, the rest train. validation_percent=0 (the default) gives no
validation split and leaves train and eval exactly as they were before the validation split existed.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks import TaskSettings

STEP_DELIMITER = "\n"
ANSWER_PREFIX = "A"

# Operators by symbol (a registry, so "*" is one more line, not a branch).
OPERATORS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}

_PROMPT_RE = re.compile(r"(\d+)((?:[+\-*]\d+)+)=")
_OP_RE = re.compile(r"([+\-*])(\d+)")


@dataclass(frozen=True)
class Problem:
    """One arithmetic chain. ``prompt`` is the bare question (``1+5-8+4=``); see ``prompt_text``."""

    prompt_id: str
    prompt: str
    answer: str  # decimal string of the final value, e.g. "2"
    operands: tuple[int, ...]  # (1, 5, 8, 4)
    ops: tuple[str, ...]  # ("+", "-", "+"), one per step
    modulus: int = 10

    @property
    def num_ops(self) -> int:
        return len(self.ops)


def apply_op(op: str, a: int, b: int, modulus: int) -> int:
    return int(OPERATORS[op](a, b)) % modulus


def prompt_id_of(prompt: str) -> str:
    """Stable id from the prompt text (same problem, same id, in every process and run)."""
    return "ar-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]


SPLITS = ("train", "eval", "validation")


def split_of(prompt: str, eval_percent: int = 20, validation_percent: int = 0) -> str:
    """'eval' for a fixed eval_percent% of all prompts (by hash), 'validation' for the next
    validation_percent%, 'train' for the rest. Validation takes its buckets from train, never from eval, so
    the eval split (and every eval set drawn from it) is the same whatever validation_percent is."""
    bucket = int(hashlib.sha256(("split:" + prompt).encode()).hexdigest()[:8], 16) % 100
    if bucket < eval_percent:
        return "eval"
    return "validation" if bucket < eval_percent + validation_percent else "train"


def make_problem(operands: list[int] | tuple[int, ...], ops: list[str] | tuple[str, ...], modulus: int = 10) -> Problem:
    if len(operands) != len(ops) + 1 or not ops:
        raise ValueError(f"need len(operands) == len(ops) + 1 >= 2, got operands={operands} ops={ops}")
    bad = [o for o in ops if o not in OPERATORS]
    if bad:
        raise ValueError(f"unknown operator(s) {bad}; known: {sorted(OPERATORS)}")
    prompt = str(operands[0]) + "".join(f"{o}{b}" for o, b in zip(ops, operands[1:], strict=True)) + "="
    value = operands[0]
    for o, b in zip(ops, operands[1:], strict=True):
        value = apply_op(o, value, b, modulus)
    return Problem(prompt_id_of(prompt), prompt, str(value), tuple(operands), tuple(ops), modulus)


def problem_from_prompt(prompt: str, modulus: int = 10) -> Problem:
    """Rebuild a Problem from its prompt (bare ``1+5-8+4=`` or the policy text with its newline)."""
    text = prompt.strip()
    m = _PROMPT_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not an arithmetic chain prompt: {prompt!r} (expected e.g. '1+5-8+4=')")
    pairs = _OP_RE.findall(m.group(2))
    return make_problem([int(m.group(1))] + [int(b) for _, b in pairs], [o for o, _ in pairs], modulus)


def prompt_text(problem: Problem) -> str:
    """The exact, chat-free text the policy is conditioned on: the question, then a newline."""
    return problem.prompt + STEP_DELIMITER


def rest_text(ops: tuple[str, ...] | list[str], operands: tuple[int, ...] | list[int]) -> str:
    """The remaining chain written after a result, e.g. ``-8+4`` (empty when nothing remains)."""
    return "".join(f"{o}{b}" for o, b in zip(ops, operands, strict=True))


def solution_steps(problem: Problem) -> list[str]:
    """Gold step lines without their delimiters: n operation lines, then the answer line."""
    lines = []
    value = problem.operands[0]  # written as given; every result is reduced mod modulus
    for k, (op, b) in enumerate(zip(problem.ops, problem.operands[1:], strict=True)):
        result = apply_op(op, value, b, problem.modulus)
        rest = rest_text(problem.ops[k + 1 :], problem.operands[k + 2 :])
        lines.append(f"{value}{op}{b}={result}" + (f" {rest}" if rest else ""))
        value = result
    lines.append(f"{ANSWER_PREFIX}{value}")
    return lines


def solution_text(problem: Problem) -> str:
    """The gold response text (EOS is added by the tokenizer side, not here)."""
    return "".join(line + STEP_DELIMITER for line in solution_steps(problem))


class ArithmeticTask:
    """Seeded sampler of arithmetic chains. Difficulty grows with the number of operations."""

    def __init__(
        self,
        min_steps: int = 2,
        max_steps: int = 5,
        modulus: int = 10,
        operand_max: int | None = None,
        operators: str = "+-",
        seed: int = 0,
        eval_percent: int = 20,
        validation_percent: int = 0,
    ):
        operand_max = modulus - 1 if operand_max is None else operand_max
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps} max_steps={max_steps}")
        if modulus < 2:
            raise ValueError(f"modulus must be >= 2, got {modulus}")
        if operand_max < 1:
            raise ValueError(f"operand_max must be >= 1, got {operand_max}")
        if not operators or any(o not in OPERATORS for o in operators):
            raise ValueError(f"operators={operators!r}: each must be one of {sorted(OPERATORS)}")
        if not 0 < eval_percent < 100:
            raise ValueError(f"eval_percent must be in (0, 100), got {eval_percent}")
        if not 0 <= validation_percent < 100 - eval_percent:  # train must keep at least one bucket
            raise ValueError(f"validation_percent must be in [0, {100 - eval_percent}), got {validation_percent}")
        self.min_steps, self.max_steps = min_steps, max_steps
        self.modulus, self.operand_max, self.operators = modulus, operand_max, operators
        self.eval_percent, self.validation_percent = eval_percent, validation_percent
        self.rng = random.Random(seed)

    @classmethod
    def from_settings(cls, s: TaskSettings) -> ArithmeticTask:
        return cls(
            min_steps=s.min_steps,
            max_steps=s.max_steps,
            modulus=s.modulus,
            operand_max=s.operand_max,
            operators=s.operators,
            seed=s.seed,
            validation_percent=s.validation_percent,
        )

    def _draw(self, rng: random.Random) -> Problem:
        n = rng.randint(self.min_steps, self.max_steps)
        operands = [rng.randint(0, self.operand_max) for _ in range(n + 1)]
        ops = [rng.choice(self.operators) for _ in range(n)]
        return make_problem(operands, ops, self.modulus)

    def sample(self, n: int, split: str = "train", seed: int | None = None) -> list[Problem]:
        """n problems of one split (duplicates possible). seed=None continues the task's own stream;
        an int gives a fixed set (use it for eval and validation sets)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split == "validation" and not self.validation_percent:  # else the loop below would never end
            raise ValueError("no validation split: validation_percent is 0 (eval.validation_percent in a config)")
        rng = self.rng if seed is None else random.Random(seed)
        out: list[Problem] = []
        while len(out) < n:
            p = self._draw(rng)
            if self.split_of(p) == split:
                out.append(p)
        return out

    def split_of(self, problem: Problem) -> str:
        return split_of(problem.prompt, self.eval_percent, self.validation_percent)

    def max_response_chars(self) -> int:
        """Length bound of a gold response at max_steps (for choosing max_new_tokens)."""
        digits = len(str(max(self.modulus - 1, self.operand_max)))
        line = 3 * digits + 2 + 1 + (self.max_steps - 1) * (digits + 1) + 1
        return self.max_steps * line + len(ANSWER_PREFIX) + digits + 1

    # The uniform task interface used by sft/evaluate (other tasks provide the same three functions).
    prompt_text = staticmethod(prompt_text)
    # No chat template for arithmetic (the oracle parses the prompt as written): the question is the prompt.
    question_text = staticmethod(prompt_text)
    solution_text = staticmethod(solution_text)
    solution_steps = staticmethod(solution_steps)
