"""Math datasets from JSONL: question/answer problems (GSM8K / MATH style) and step-labelled data.

Answers are checked with the ``math-verify`` package (Hugging Face), which parses LaTeX or plain
expressions (``\\boxed{..}`` included) and compares them symbolically. Step-labelled rows follow the
spirit of PRM800K (Lightman et al. 2305.20050): a prompt, its steps, one label per step; labels are
numbers (PRM800K's -1/0/+1, or Math-Shepherd's hard 0/1 and soft [0, 1] labels), stored as given.

A malformed row raises ``DatasetError`` naming file, line and field; with ``skip_bad=True`` it is
skipped and counted instead, and the count is returned so callers report it. Malformed means anything
but one UTF-8 JSON object per line with the fields' types: non-UTF-8 bytes, bad or truncated JSON,
repeated keys, lone-surrogate escapes, non-finite numbers. A UTF-8 BOM is accepted at the start of the
file only (editors write one there).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tasks.oracle import Labels

T = TypeVar("T")


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class TextProblem:
    prompt_id: str
    prompt: str
    answer: str
    # "file:line" the row came from, so later checks (prompt length) can name it; not part of equality
    source: str = field(default="", compare=False)


@dataclass
class StepExample:
    prompt: str
    steps: list[str]
    labels: list[float]


_BOM = b"\xef\xbb\xbf"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated keys silently; two prompts in one row is a data bug
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise DatasetError(f"duplicate field {key[:50]!r}")
        seen.add(key)
    return dict(pairs)


def _parse_line(raw: bytes, where: str) -> dict[str, Any]:
    """One JSONL line (bytes) -> a JSON object; DatasetError naming ``where`` for anything else.

    Lines are decoded one at a time, so one non-UTF-8 line is a bad row, not a crash of the whole file."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{where}: line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        ) from None
    try:
        row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except DatasetError as e:
        raise DatasetError(f"{where}: {e}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # int longer than 4300 digits, nesting deeper than the stack
        raise DatasetError(f"{where}: invalid JSON ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: row must be a JSON object, got {type(row).__name__}")
    return row


def _rows(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line bytes) per non-blank line. Read as bytes: decoding is per line (_parse_line)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]  # a BOM at the start of the file is an encoding mark, not row data
            if raw.strip():
                yield lineno, raw


def _read(path: str | Path, parse_row: Callable[[dict[str, Any], str], T], skip_bad: bool) -> tuple[list[T], int]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    items: list[T] = []
    skipped = 0
    for lineno, raw in _rows(path):
        where = f"{path}:{lineno}"
        try:
            items.append(parse_row(_parse_line(raw, where), where))
        except DatasetError:
            if not skip_bad:
                raise
            skipped += 1
    return items, skipped


def _field(row: dict[str, Any], name: str, where: str, types: tuple[type, ...]) -> Any:
    if name not in row:
        raise DatasetError(f"{where}: missing field '{name}'")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, types):
        raise DatasetError(
            f"{where}: field '{name}' must be {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}"
        )
    return _valid_value(value, name, where)


def _valid_value(value: Any, name: str, where: str) -> Any:
    """Reject values JSON can hold but text and numbers cannot: lone surrogates, NaN / inf."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # a "\ud800" escape decodes to a str that cannot be encoded (or hashed)
        except UnicodeEncodeError:
            raise DatasetError(
                f"{where}: field '{name}' holds a lone surrogate (\\ud800-\\udfff escape), not valid Unicode text"
            ) from None
    elif isinstance(value, float) and not math.isfinite(value):  # json reads NaN, Infinity, 1e999
        raise DatasetError(f"{where}: field '{name}' must be finite, got {value}")
    return value


def _problem_row(row: dict[str, Any], where: str) -> TextProblem:
    prompt = _field(row, "prompt", where, (str,))
    answer = _field(row, "answer", where, (str, int, float))
    if not prompt.strip():
        raise DatasetError(f"{where}: field 'prompt' is empty")
    if not str(answer).strip():
        raise DatasetError(f"{where}: field 'answer' is empty")
    pid = row.get("id")
    if pid is None:
        pid = "js-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]
    else:
        pid = _field(row, "id", where, (str, int))
    return TextProblem(str(pid), prompt, str(answer), source=where)


def load_jsonl_problems(path: str | Path, skip_bad: bool = False) -> tuple[list[TextProblem], int]:
    """Rows ``{"prompt": str, "answer": str|number[, "id": ...]}`` -> (problems, number skipped)."""
    return _read(path, _problem_row, skip_bad)


def _step_row(row: dict[str, Any], where: str) -> StepExample:
    prompt = _field(row, "prompt", where, (str,))
    steps = _field(row, "steps", where, (list,))
    labels = _field(row, "labels", where, (list,))
    if not steps:
        raise DatasetError(f"{where}: field 'steps' is empty")
    if len(steps) != len(labels):
        raise DatasetError(f"{where}: field 'labels' has {len(labels)} entries, 'steps' has {len(steps)}")
    for i, s in enumerate(steps):
        if not isinstance(s, str):
            raise DatasetError(f"{where}: field 'steps[{i}]' must be str, got {type(s).__name__}")
        _valid_value(s, f"steps[{i}]", where)
    for i, lab in enumerate(labels):
        if isinstance(lab, bool) or not isinstance(lab, (int, float)):
            raise DatasetError(f"{where}: field 'labels[{i}]' must be a number, got {repr(lab)[:50]}")
        if not math.isfinite(_as_float(lab)):
            raise DatasetError(f"{where}: field 'labels[{i}]' must be a finite number, got {repr(lab)[:50]}")
    return StepExample(prompt, list(steps), [float(x) for x in labels])


def _as_float(x: int | float) -> float:
    try:
        return float(x)
    except OverflowError:  # an integer label beyond float range
        return math.inf


def read_step_jsonl(path: str | Path, skip_bad: bool = False) -> tuple[list[StepExample], int]:
    """Rows ``{"prompt", "steps": [...], "labels": [...]}`` -> (examples, number skipped)."""
    return _read(path, _step_row, skip_bad)


def write_step_jsonl(path: str | Path, examples: list[StepExample]) -> None:
    """Write examples; validates each one the way the reader does, so a written file always reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, ex in enumerate(examples):
            row = {"prompt": ex.prompt, "steps": ex.steps, "labels": ex.labels}
            _step_row(row, f"write_step_jsonl item {i}")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def label_text_answer(problem: TextProblem, response_text: str) -> Labels:
    """Outcome-only labels for a dataset problem (no oracle exists for its steps: step lists are empty)."""
    from tasks.oracle import Labels

    return Labels(
        step_correct=[],
        prefix_correct=[],
        outcome=check_answer(response_text, problem.answer),
        format_ok=True,
        num_steps=0,
        first_error=None,
        answer=None,
        truncated=False,
        reason="",
    )


def text_prompt(problem: TextProblem) -> str:
    """A dataset prompt as written (no chat template): JsonlTask.prompt_text applies task.chat_template."""
    return problem.prompt


def check_answer(pred_text: str, gold: str, timeout_seconds: int | None = 5) -> bool:
    """True when math-verify finds ``pred_text``'s final answer equal to ``gold``.

    math-verify's timeouts use SIGALRM, which only works in a process's main thread: off the main
    thread (e.g. a threaded Ray actor) the timeout is disabled. Parse failures count as wrong."""
    from math_verify import parse, verify  # heavy import (sympy), only when answers are checked

    if threading.current_thread() is not threading.main_thread():
        timeout_seconds = None

    gold_parsed = parse(gold, parsing_timeout=timeout_seconds)
    if not gold_parsed:
        # A bare gold answer like "72" parses as an expression; if it did not, compare as given.
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout_seconds)
    pred_parsed = parse(pred_text, parsing_timeout=timeout_seconds)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds))
