"""Arithmetic chains: format worked by hand, seeding, knobs, and train/eval disjointness."""

import itertools

import pytest

from tasks.arithmetic import (
    ArithmeticTask,
    make_problem,
    problem_from_prompt,
    prompt_text,
    solution_steps,
    solution_text,
    split_of,
)
from tasks.oracle import label_response


def test_gold_solution_worked_by_hand():
    # 1+5=6; 6-8=-2 = 8 (mod 10); 8+4=12 = 2 (mod 10); answer line "A2".
    p = problem_from_prompt("1+5-8+4=")
    assert p.prompt == "1+5-8+4="
    assert p.answer == "2"
    assert p.operands == (1, 5, 8, 4) and p.ops == ("+", "-", "+")
    assert solution_steps(p) == ["1+5=6 -8+4", "6-8=8 +4", "8+4=2", "A2"]
    assert solution_text(p) == "1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\n"
    assert prompt_text(p) == "1+5-8+4=\n"


def test_multiplication_and_modulus_100_by_hand():
    # 37*3 = 111 = 11 (mod 100); 11-50 = -39 = 61 (mod 100).
    p = make_problem([37, 3, 50], ["*", "-"], modulus=100)
    assert p.prompt == "37*3-50="
    assert solution_steps(p) == ["37*3=11 -50", "11-50=61", "A61"]
    assert p.answer == "61"


def test_prompt_round_trip_and_stable_id():
    p = make_problem([9, 1, 4], ["-", "*"])
    q = problem_from_prompt(prompt_text(p))
    assert q == p
    assert p.prompt_id == make_problem([9, 1, 4], ["-", "*"]).prompt_id
    assert p.prompt_id != make_problem([9, 1, 5], ["-", "*"]).prompt_id


def test_seeded_sampling_is_reproducible():
    a = ArithmeticTask(seed=3).sample(50)
    b = ArithmeticTask(seed=3).sample(50)
    c = ArithmeticTask(seed=4).sample(50)
    assert a == b
    assert a != c
    task = ArithmeticTask(seed=0)
    assert task.sample(20, "eval", seed=7) == task.sample(20, "eval", seed=7)  # fixed eval sets


def test_train_and_eval_are_disjoint_by_construction():
    task = ArithmeticTask(min_steps=2, max_steps=3, seed=0)
    train = {p.prompt for s in range(3) for p in ArithmeticTask(2, 3, seed=s).sample(1500, "train")}
    evals = {p.prompt for s in range(3) for p in task.sample(1500, "eval", seed=100 + s)}
    assert train and evals
    assert not train & evals
    assert all(split_of(q) == "eval" for q in evals)
    # Over every 2-operation chain (10*10*10 operands x 2*2 operators = 4000), about 20% are eval.
    prompts = [
        make_problem(list(o), list(ops)).prompt
        for o in itertools.product(range(10), repeat=3)
        for ops in itertools.product("+-", repeat=2)
    ]
    assert len(prompts) == 4000
    frac = sum(split_of(q) == "eval" for q in prompts) / len(prompts)
    assert 0.17 < frac < 0.23


def test_knobs_are_respected():
    task = ArithmeticTask(min_steps=3, max_steps=4, modulus=7, operand_max=4, operators="*", seed=1)
    problems = task.sample(300)
    assert {p.num_ops for p in problems} == {3, 4}
    assert all(max(p.operands) <= 4 and set(p.ops) == {"*"} and p.modulus == 7 for p in problems)
    assert all(0 <= int(p.answer) < 7 for p in problems)
    assert ArithmeticTask().operand_max == 9


def test_gold_solutions_are_labelled_correct_and_fit_the_length_bound():
    for task in (ArithmeticTask(seed=2), ArithmeticTask(1, 6, modulus=100, operators="+-*", seed=2)):
        for p in task.sample(200):
            lab = label_response(p, solution_text(p))
            assert lab.outcome and lab.format_ok and all(lab.step_correct)
            assert lab.num_steps == p.num_ops + 1
            assert len(solution_text(p)) <= task.max_response_chars()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(min_steps=0), "min_steps"),
        (dict(min_steps=4, max_steps=3), "max_steps"),
        (dict(modulus=1), "modulus"),
        (dict(operators="+/"), "operators"),
        (dict(operand_max=0), "operand_max"),
        (dict(eval_percent=0), "eval_percent"),
    ],
)
def test_bad_knobs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ArithmeticTask(**kwargs)


def test_bad_prompt_and_split_raise():
    with pytest.raises(ValueError, match="not an arithmetic chain prompt"):
        problem_from_prompt("what is 2+2?")
    with pytest.raises(ValueError, match="split"):
        ArithmeticTask().sample(1, "test")
