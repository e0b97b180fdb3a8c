"""The PRM lifecycle's glue without a cluster: step splitting, the Expander on a fake generator pool (see
stepwise_world.py), the Judge and the PrmScorer."""

from __future__ import annotations

import pytest
from stepwise_world import CORRUPTED, GOLD, NL, PARTIAL, WRONG, FakePool, FakePrm, P, expander

from algo.search import Node
from algo.seeding import derive_seed
from algo.trajectory import PromptRequest
from orchestrator.stepwise import Judge, PrmScorer, arithmetic_final, text_steps
from tasks.arithmetic import make_problem
from tasks.datasets import TextProblem

# ---------------------------------------------------------------- text_steps


@pytest.mark.parametrize(
    "text, delimiter, steps",
    [
        ("a\nb\n", NL, ("a\n", "b\n")),
        ("a\nb", NL, ("a\n", "b")),  # a last unterminated piece is a step too
        ("", NL, ()),
        ("\n", NL, ("\n",)),
        ("\n\n", NL, ("\n", "\n")),  # empty steps are steps
        ("abc", NL, ("abc",)),
        ("a\n\nb\nc\n\n", "\n\n", ("a\n\n", "b\nc\n\n")),  # a multi-character delimiter
        ("1+5=6 -8+4\n6-8=8 +4\n8+4=2\nA2\n", NL, ("1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2\n")),
    ],
)
def test_text_steps(text, delimiter, steps):
    assert text_steps(text, delimiter) == steps
    assert "".join(steps) == text  # nothing lost, nothing added


# ---------------------------------------------------------------- Expander

REQUESTS = [
    PromptRequest("p0", 0, "Q0\n", "1", question="Q0?", samples=(1,)),
    PromptRequest("p1", 1, "Q1\n", "2", question="Q1?"),
]


def test_expander_prefixes_and_sampling():
    pool = FakePool(lambda req, i, s: "x\n")
    exp = expander(pool, REQUESTS, seed=5)
    nodes = [Node(1, ("a\n", "b\n"), False), Node(0, (), False)]
    exp(nodes, 3, True)
    requests, sampling = pool.calls[0]
    # one request per node: the node's problem's request, its steps joined into the prefix, group_id = its
    # position in the call, all n samples (a request's own `samples` subset is not carried over)
    assert [(r.prompt_id, r.text, r.question, r.prefix, r.group_id, r.samples) for r in requests] == [
        ("p1", "Q1\n", "Q1?", "a\nb\n", 0, None),
        ("p0", "Q0\n", "Q0?", "", 1, None),
    ]
    assert sampling == {
        "n": 3,
        "temperature": 0.7,
        "top_p": 1.0,
        "max_tokens": 32,
        "stop": [NL],  # one step: generation stops at the step delimiter
        "seed": derive_seed(5, "expand", 1),
    }
    exp(nodes, 2, False)
    assert pool.calls[1][1]["stop"] is None  # to the end
    assert pool.calls[1][1]["n"] == 2
    assert REQUESTS[0].samples == (1,) and REQUESTS[0].prefix == ""  # the expander's requests are copies

    d2 = expander(FakePool(lambda req, i, s: "x\n\n"), REQUESTS, delimiter="\n\n")
    d2([Node(0, ("a\n\n",), False)], 1, True)
    assert d2.pool.calls[0][1]["stop"] == ["\n\n"]  # type: ignore[attr-defined]


def test_expander_seeds_differ_between_calls_and_repeat_between_runs():
    def seeds(seed: int) -> list[int]:
        pool = FakePool(lambda req, i, s: "x\n")
        exp = expander(pool, REQUESTS, seed=seed)
        for _ in range(3):
            exp([Node(0, (), False)], 1, True)
        return [s["seed"] for _, s in pool.calls]

    first = seeds(0)
    assert len(set(first)) == 3  # a new seed for every call
    assert seeds(0) == first  # the same search draws the same samples
    assert set(seeds(1)).isdisjoint(first)  # another run seed: other samples


def test_expander_empty_batch_calls_nothing():
    pool = FakePool(lambda req, i, s: "x\n")
    exp = expander(pool, REQUESTS)
    assert exp([], 4, True) == []
    assert pool.calls == [] and exp.calls == 0 and exp.rollouts == 0


PARENT = Node(0, ("1+5=6 -8+4\n",), False)


@pytest.mark.parametrize(
    "text, reason, one_step, is_final, new_steps, done",
    [
        ("6-8=8 +4\n", "stop", True, None, ("6-8=8 +4\n",), False),  # one step, stopped at the delimiter
        ("6-8=8 +4", "stop", True, None, ("6-8=8 +4",), True),  # EOS right after the step: no delimiter
        ("", "stop", True, None, (), True),  # EOS at once: no new step
        ("6-8=8 +4\n", "length", True, None, ("6-8=8 +4\n",), True),  # out of tokens
        ("A2\n", "stop", True, arithmetic_final, ("A2\n",), True),  # the answer line ends the solution
        ("A2\n", "stop", True, None, ("A2\n",), False),  # ... only when the task says so
        ("6-8=8 +4\n8+4=2\nA2\n", "stop", False, None, ("6-8=8 +4\n", "8+4=2\n", "A2\n"), True),  # to the end
        ("6-8=8 +4\n", "stop", False, None, ("6-8=8 +4\n",), True),  # to the end is always done
    ],
)
def test_expander_children(text, reason, one_step, is_final, new_steps, done):
    kw = {"is_final": is_final} if is_final else {}
    exp = expander(FakePool(lambda req, i, s: (text, reason)), REQUESTS, **kw)
    [[child]] = exp([PARENT], 1, one_step)
    assert child == Node(0, PARENT.steps + new_steps, done)


def test_expander_counts_tokens_rollouts_and_places_samples():
    # sample i of the node at position j writes j + 1 + 2 i characters, then the delimiter (distinct texts)
    pool = FakePool(lambda req, i, s: chr(ord("a") + req.group_id) * (req.group_id + 1 + 2 * i) + NL)
    started, finished = [], []
    exp = expander(pool, REQUESTS, on_call=started.append, on_sample=lambda: finished.append(1))
    nodes = [Node(0, (), False), Node(1, ("z\n",), False), Node(0, ("y\n",), False)]
    kids = exp(nodes, 2, True)
    # children in sample order under their parent, although the pool yielded them in reverse
    assert [[k.steps for k in row] for row in kids] == [
        [("a\n",), ("aaa\n",)],
        [("z\n", "bb\n"), ("z\n", "bbbb\n")],
        [("y\n", "ccc\n"), ("y\n", "ccccc\n")],
    ]
    assert all(k.problem == n.problem and not k.done for n, row in zip(nodes, kids, strict=True) for k in row)
    # tokens = characters incl. the delimiter: node j sample i has j + 2 + 2 i
    assert {k.steps[-1]: t for k, t in exp.node_tokens.items()} == {
        "a\n": 2,
        "aaa\n": 4,
        "bb\n": 3,
        "bbbb\n": 5,
        "ccc\n": 4,
        "ccccc\n": 6,
    }
    # per problem: problem 0 has nodes 0 and 2 (2 + 4 + 4 + 6), problem 1 has node 1 (3 + 5)
    assert exp.tokens == [16, 8]
    assert (exp.rollouts, exp.calls) == (6, 1)
    assert started == [6] and len(finished) == 6
    exp([Node(1, (), False)], 1, False)  # one more call adds up
    assert exp.tokens == [16, 8 + 2] and (exp.rollouts, exp.calls) == (7, 2)


# ---------------------------------------------------------------- Judge, PrmScorer


def test_gold_is_what_the_hand_says():
    assert GOLD == ("1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2\n")


@pytest.mark.parametrize(
    "steps, answer, correct",
    [(GOLD, "2", True), (WRONG, "7", False), (PARTIAL, None, False), (CORRUPTED, "3", False), ((), None, False)],
)
def test_judge_arithmetic(steps, answer, correct):
    judge = Judge([make_problem([3, 4], ["+"]), P])
    node = Node(1, steps, True)
    assert judge.answer(node) == answer
    assert judge.correct(node) is correct


def test_judge_text_problems_and_unknown_types():
    judge = Judge([TextProblem("t0", "What is 2+2?", "4"), "not a problem"])
    node = Node(0, ("We add the numbers.\n\n", "The answer is $\\boxed{4}$.\n\n", "  \n"), True)
    assert judge.answer(node) == "The answer is $\\boxed{4}$."  # the last non-empty line
    assert judge.correct(node)
    assert not judge.correct(Node(0, ("The answer is $\\boxed{5}$.",), True))
    with pytest.raises(TypeError, match="no checker"):
        judge.correct(Node(1, ("x",), True))


def test_arithmetic_final():
    assert arithmetic_final("A2\n") and arithmetic_final("A")
    assert not arithmetic_final("1+5=6 -8+4\n") and not arithmetic_final("\n")


def test_prm_scorer_strips_the_delimiter_and_counts():
    prm = FakePrm()
    scorer = PrmScorer(prm, ["Q0\n", "Q1\n"], NL)
    assert scorer([Node(1, WRONG, True), Node(0, (), False)]) == [[0.9, 0.9, 0.9, 0.1], []]
    assert prm.items == [("Q1\n", ["1+5=6 -8+4", "6-8=8 +4", "8+4=2", "A7"]), ("Q0\n", [])]
    assert scorer([]) == []
    assert (scorer.calls, scorer.scored) == (2, 2)
