"""Corrupted gold solutions: hand-worked edits, and the oracle's labels of thousands of them.

What tasks.corrupt guarantees for a corruption at step s: the oracle's first_error is s, every later step
is step_correct but neither prefix_correct nor strict_step, the format is the gold one and the answer is
wrong (an error that "*" would multiply away is never drawn).
"""

import random
from collections import Counter

import pytest

from tasks.arithmetic import ArithmeticTask, make_problem, problem_from_prompt, solution_steps
from tasks.corrupt import CORRUPTIONS, Corrupted, corrupt_solution
from tasks.oracle import label_response

P = problem_from_prompt("1+5-8+4=")  # gold: 1+5=6 -8+4 / 6-8=8 +4 / 8+4=2 / A2


def all_draws(problem, kind, seeds=300, **kw):
    """Every distinct Corrupted that seeds 0..seeds-1 give (enough to see each of a handful of outcomes)."""
    return {corrupt_solution(problem, random.Random(s), kind, **kw) for s in range(seeds)}


def test_operator_swap_skips_steps_where_it_changes_nothing():
    # Step 1 "+5": 1-5 = -4 = 6 mod 10, the same result, so no error: never drawn. Step 2: 6+8 = 14 = 4,
    # then 4+4 = 8. Step 3: 8-4 = 4.
    assert all_draws(P, "operator") == {
        Corrupted("1+5=6 -8+4\n6+8=4 +4\n4+4=8\nA8\n", 1, "operator"),
        Corrupted("1+5=6 -8+4\n6-8=8 +4\n8-4=4\nA4\n", 2, "operator"),
    }


def test_result_and_copy_on_a_binary_chain():
    # Mod 2 every value has exactly one alternative. 1+1+1, gold: 1+1=0 +1 / 0+1=1 / A1.
    q = make_problem([1, 1, 1], ["+", "+"], modulus=2)
    assert all_draws(q, "result") == {
        Corrupted("1+1=1 +1\n1+1=0\nA0\n", 0, "result"),
        Corrupted("1+1=0 +1\n0+1=0\nA0\n", 1, "result"),
    }
    assert all_draws(q, "copy") == {  # copies 0 instead of 1 and computes on it
        Corrupted("0+1=1 +1\n1+1=0\nA0\n", 0, "copy"),
        Corrupted("1+1=0 +1\n1+1=0\nA0\n", 1, "copy"),
    }


def test_single_operator_problem_falls_back_to_result_unless_operators_are_given():
    q = make_problem([1, 1], ["+"], modulus=2)  # gold: 1+1=0 / A0
    assert all_draws(q, "operator") == {Corrupted("1+1=1\nA1\n", 0, "result")}
    assert all_draws(q, "operator", operators="+-") == {Corrupted("1+1=1\nA1\n", 0, "result")}  # 1-1 = 1+1
    assert all_draws(q, "operator", operators="+*") == {Corrupted("1*1=1\nA1\n", 0, "operator")}


def test_an_error_that_a_later_times_zero_would_erase_is_never_drawn():
    # 3+4*0, gold: 3+4=7 *0 / 7*0=0 / A0. Any error in step 1 vanishes in 7'*0 = 0, so only step 2 is
    # corrupted; "copy" cannot corrupt it either (x*0 = 0) and falls back to "result".
    q = make_problem([3, 4, 0], ["+", "*"])
    results = {Corrupted(f"3+4=7 *0\n7*0={r}\nA{r}\n", 1, "result") for r in range(1, 10)}
    assert all_draws(q, "result") == results
    assert all_draws(q, "copy") == results
    assert all_draws(q, "operator") == {Corrupted("3+4=7 *0\n7+0=7\nA7\n", 1, "operator")}
    # 1+2*5, gold: 1+2=3 *5 / 3*5=5 / A5. An odd result r at step 1 gives r*5 = 5 mod 10: it rejoins the
    # true chain, so step 1 only ever gets even results.
    q = make_problem([1, 2, 5], ["+", "*"])
    step1 = {c.text.split("\n")[0] for c in all_draws(q, "result") if c.step == 0}
    assert step1 == {f"1+2={r} *5" for r in (0, 2, 4, 6, 8)}


def test_unknown_kind_or_operator_is_refused():
    with pytest.raises(ValueError, match="copy, result, operator"):
        corrupt_solution(P, random.Random(0), "sign")
    with pytest.raises(ValueError, match="operators"):
        corrupt_solution(P, random.Random(0), "operator", operators="+/")
    with pytest.raises(ValueError, match="no error"):  # mod 1 every value is 0
        corrupt_solution(make_problem([0, 0], ["+"], modulus=1), random.Random(0))


def test_same_rng_same_corruption():
    a = [corrupt_solution(P, random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]


TASKS = [
    ArithmeticTask(seed=11),
    ArithmeticTask(1, 6, modulus=100, operand_max=150, operators="+-*", seed=11),
    ArithmeticTask(2, 5, modulus=10, operators="*", seed=11),  # many zero divisors: the hard case
    ArithmeticTask(1, 4, modulus=2, operators="+-", seed=11),
]


@pytest.mark.parametrize("task", TASKS, ids=["default", "mod100", "times-only", "mod2"])
def test_the_oracle_sees_exactly_one_lasting_error(task):
    rng = random.Random(5)
    kinds: Counter[str] = Counter()
    for i, problem in enumerate(task.sample(400)):
        asked = [None, *CORRUPTIONS][i % 4]
        c = corrupt_solution(problem, rng, asked, operators=task.operators if i % 2 else None)
        assert c.kind in CORRUPTIONS and (asked is None or c.kind in (asked, "result"))  # result: fallback
        assert 0 <= c.step < problem.num_ops
        lines = c.text.split("\n")
        assert lines[-1] == "" and lines[: c.step] == solution_steps(problem)[: c.step]
        lab = label_response(problem, c.text)
        n = problem.num_ops + 1
        assert lab.format_ok and not lab.truncated and lab.num_steps == n
        assert lab.first_error == c.step
        assert lab.step_correct == [k != c.step for k in range(n)]
        assert lab.prefix_correct == lab.strict_step == [k < c.step for k in range(n)]
        assert not lab.outcome and lab.answer != problem.answer
        kinds[c.kind] += 1
    # No other operator to swap in, or a+b = a-b mod 2: "operator" always falls back to "result".
    if task.modulus == 2 or len(task.operators) == 1:
        assert "operator" not in kinds and set(kinds) == {"copy", "result"}, kinds
    else:
        assert set(kinds) == set(CORRUPTIONS), kinds


def test_steps_are_drawn_uniformly_on_plus_minus_chains():
    # 1+5-8+4 mod 10: "copy" and "result" can corrupt every step, each a third of the time.
    rng = random.Random(0)
    for kind in ("copy", "result"):
        steps = Counter(corrupt_solution(P, rng, kind).step for _ in range(1500))
        assert set(steps) == {0, 1, 2} and all(400 < v < 600 for v in steps.values()), steps
