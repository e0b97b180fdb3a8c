"""The PRM lifecycle's glue without a cluster: step splitting, the Expander on a fake generator pool, the Judge,
the label kinds worked by hand in a fake world, the oracle comparison, and the search methods' bindings.

The fake pool stands in for orchestrator.generators.GeneratorPool: `stream(requests, sampling)` yields
(ref, Trajectory) for every sample of every request, here in REVERSE order (a real pool yields in finishing
order), so the Expander must place each sample by its info["sample"]. A sample's text is given by a world
function of (request, sample index, sampling); it has one token per character.
"""

from __future__ import annotations

import random

import pytest

from algo.search import Node
from algo.seeding import derive_seed
from algo.trajectory import PromptRequest, Trajectory
from orchestrator.config import LABEL_KINDS, SEARCH_METHODS
from orchestrator.labelling import KINDS, LabelJob, compare_with_oracle, examples, oracle_values
from orchestrator.search_command import _curves, plot_search
from orchestrator.searching import METHODS, SearchRun, budgets_of
from orchestrator.stepwise import Expander, Judge, PrmScorer, arithmetic_final, text_steps
from tasks.arithmetic import ArithmeticTask, make_problem, prompt_text, solution_text
from tasks.corrupt import corrupt_solution
from tasks.datasets import TextProblem
from tasks.oracle import STEP_MEANINGS

NL = "\n"


def trajectory(req: PromptRequest, sample: int, text: str, finish_reason: str = "stop") -> Trajectory:
    return Trajectory(
        uid=f"g{req.group_id}-{sample}",
        prompt_id=req.prompt_id,
        group_id=req.group_id,
        policy_version=0,
        prompt_ids=[],
        response_ids=list(range(len(text))),  # one token per character
        behavior_logprobs=[0.0] * len(text),
        finish_reason=finish_reason,
        step_spans=[],
        prompt_text=req.text,
        response_text=text,
        info={"sample": sample},
    )


class FakePool:
    def __init__(self, world):
        self.world = world  # (request, sample, sampling) -> text or (text, finish_reason)
        self.calls: list[tuple[list[PromptRequest], dict]] = []

    def stream(self, requests, sampling):
        self.calls.append((list(requests), dict(sampling)))
        out = []
        for req in requests:
            for i in range(sampling["n"]):
                got = self.world(req, i, sampling)
                text, reason = (got, "stop") if isinstance(got, str) else got
                out.append(trajectory(req, i, text, reason))
        for traj in reversed(out):
            yield object(), traj


def expander(pool, requests, *, seed=0, delimiter=NL, **kw) -> Expander:
    return Expander(pool, requests, delimiter, temperature=0.7, max_new_tokens=32, seed=seed, **kw)


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

P = make_problem([1, 5, 8, 4], ["+", "-", "+"])  # 1+5=6, 6-8=8 (mod 10), 8+4=2: the answer is 2
GOLD = text_steps(solution_text(P), NL)  # ("1+5=6 -8+4\n", "6-8=8 +4\n", "8+4=2\n", "A2\n")
WRONG = GOLD[:3] + ("A7\n",)  # right operations, wrong answer line
PARTIAL = GOLD[:2]  # unfinished (not done)
# Step 0 computes 1+5=7; the later steps compute correctly from it: step_correct [0, 1, 1, 1]
CORRUPTED = ("1+5=7 -8+4\n", "7-8=9 +4\n", "9+4=3\n", "A3\n")


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


class FakePrm:
    """A loaded PRM stand-in: the value of a step is 0.9 unless its text contains '7' (then 0.1)."""

    def __init__(self):
        self.items: list = []

    def score(self, items):
        self.items += items
        return [[0.1 if "7" in s else 0.9 for s in steps] for _, steps in items]


def test_prm_scorer_strips_the_delimiter_and_counts():
    prm = FakePrm()
    scorer = PrmScorer(prm, ["Q0\n", "Q1\n"], NL)
    assert scorer([Node(1, WRONG, True), Node(0, (), False)]) == [[0.9, 0.9, 0.9, 0.1], []]
    assert prm.items == [("Q1\n", ["1+5=6 -8+4", "6-8=8 +4", "8+4=2", "A7"]), ("Q0\n", [])]
    assert scorer([]) == []
    assert (scorer.calls, scorer.scored) == (2, 2)


# ---------------------------------------------------------------- label kinds in a fake world
#
# Completions from a prefix depend only on the prefix's number of steps k: of K = 4 completions, the first
# CORRECT[k] end with the right answer line "A2" (the oracle's outcome reads only the last line), the rest
# with "A7". So the Monte-Carlo value of a k-step prefix is CORRECT[k] / 4: 0.75, 0.25, 0.0 for k = 1, 2, 3.
K = 4
CORRECT = {1: 3, 2: 1, 3: 0}
SOLUTIONS = [Node(0, GOLD, True), Node(0, WRONG, True), Node(0, PARTIAL, False), Node(0, CORRUPTED, True)]


def world(correct: dict[int, int]):
    def complete(req, i, sampling):
        assert sampling["stop"] is None  # Monte-Carlo completions run to the end
        k = len(text_steps(req.prefix, NL))
        return "A2\n" if i < correct[k] else "A7\n"

    return complete


def label_job(pool, *, prover_pool=None, meaning="step_correct", prover_k=2, solutions=SOLUTIONS, **kw) -> LabelJob:
    problems = kw.pop("problems", [P])
    policy = expander(pool, [PromptRequest(p.prompt_id, i, prompt_text(p), p.answer) for i, p in enumerate(problems)])
    prover = expander(prover_pool, policy.requests) if prover_pool else policy
    return LabelJob(
        problems=problems,
        questions=[prompt_text(p) for p in problems],
        solutions=solutions,
        expander=policy,
        prover_expander=lambda: prover,
        judge=Judge(problems),
        meaning=meaning,
        rollouts=K,
        prover_k=prover_k,
        samples_per_problem=kw.pop("samples_per_problem", 2),
        delimiter=NL,
        seed=kw.pop("seed", 0),
    )


# A done solution's last prefix is the solution itself: not rolled out, its value is its own correctness.
#   GOLD      (done, 4 steps): prefixes k=1,2,3 -> 0.75, 0.25, 0.0; last step: correct -> 1.0
#   WRONG     (done, 4 steps): 0.75, 0.25, 0.0; last step "A7": wrong -> 0.0
#   PARTIAL   (not done, 2 steps): both prefixes rolled out -> 0.75, 0.25
#   CORRUPTED (done, 4 steps): 0.75, 0.25, 0.0; last step "A3": wrong -> 0.0
MC_SOFT = [[0.75, 0.25, 0.0, 1.0], [0.75, 0.25, 0.0, 0.0], [0.75, 0.25], [0.75, 0.25, 0.0, 0.0]]
# hard = any completion correct = (value > 0)
MC_HARD = [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
# prover, best-of-K=2 of the policy: 1 - (1 - p)^2: 0.75 -> 1 - 0.0625 = 0.9375, 0.25 -> 1 - 0.5625 = 0.4375,
# 0 -> 0, 1 -> 1
PROVER = [[0.9375, 0.4375, 0.0, 1.0], [0.9375, 0.4375, 0.0, 0.0], [0.9375, 0.4375], [0.9375, 0.4375, 0.0, 0.0]]
# rollouts: (3 + 3 + 2 + 3) prefixes x K = 11 x 4 = 44, over 4 + 4 + 2 + 4 = 14 labelled steps
ROLLOUTS, STEPS = 44, 14


def test_mc_kinds_by_hand_share_one_set_of_rollouts():
    pool = FakePool(world(CORRECT))
    job = label_job(pool)
    soft, hard, prover = KINDS["mc_soft"](job), KINDS["mc_hard"](job), KINDS["prover"](job)
    assert soft.values == MC_SOFT
    assert hard.values == MC_HARD
    assert prover.values == PROVER  # exact: every value here is a short binary fraction
    assert soft.solutions == hard.solutions == prover.solutions == SOLUTIONS
    # one batched generation call for all prefixes, shared by the three kinds (the prover is the policy)
    assert len(pool.calls) == 1 and len(pool.calls[0][0]) == 11 and pool.calls[0][1]["n"] == K
    assert job.expander.rollouts == ROLLOUTS
    assert soft.cost["rollouts"] == hard.cost["rollouts"] == prover.cost["rollouts"] == ROLLOUTS
    out = compare_with_oracle(job, "mc_soft", soft, STEP_MEANINGS)
    assert out["label/mc_soft/steps"] == STEPS
    assert out["label/mc_soft/rollouts_per_step"] == pytest.approx(ROLLOUTS / STEPS)
    # (0.75 + 0.25 + 0 + 1) + (0.75 + 0.25 + 0 + 0) + (0.75 + 0.25) + (0.75 + 0.25 + 0 + 0) = 5 over 14 steps
    assert out["label/mc_soft/mean_label"] == pytest.approx(5 / 14)


def test_prover_of_another_policy_rolls_out_on_its_own():
    # the prover's world: 4, 2, 2 of 4 completions right from 1, 2, 3 steps: p = 1.0, 0.5, 0.5, and its
    # best-of-2 value 1 - (1 - p)^2 = 1.0, 0.75, 0.75
    prover_pool, pool = FakePool(world({1: 4, 2: 2, 3: 2})), FakePool(world(CORRECT))
    job = label_job(pool, prover_pool=prover_pool, prover_k=2)
    labelled = KINDS["prover"](job)
    assert labelled.values == [[1.0, 0.75, 0.75, 1.0], [1.0, 0.75, 0.75, 0.0], [1.0, 0.75], [1.0, 0.75, 0.75, 0.0]]
    assert pool.calls == [] and len(prover_pool.calls) == 1  # the policy spent nothing
    assert labelled.cost["rollouts"] == ROLLOUTS
    # prover_k = 1: the prover's own success rate
    assert KINDS["prover"](label_job(pool, prover_pool=prover_pool, prover_k=1)).values[0] == [1.0, 0.5, 0.5, 1.0]


# The oracle's labels of the four solutions in every meaning (each meaning has both classes here):
#   GOLD      all right
#   WRONG     the answer line is wrong in every meaning: [1, 1, 1, 0]
#   PARTIAL   both steps right: [1, 1]
#   CORRUPTED step_correct [0, 1, 1, 1]; prefix_correct and strict_step [0, 0, 0, 0]
ORACLE = {
    "step_correct": [[1.0] * 4, [1.0, 1.0, 1.0, 0.0], [1.0, 1.0], [0.0, 1.0, 1.0, 1.0]],
    "prefix_correct": [[1.0] * 4, [1.0, 1.0, 1.0, 0.0], [1.0, 1.0], [0.0] * 4],
    "strict_step": [[1.0] * 4, [1.0, 1.0, 1.0, 0.0], [1.0, 1.0], [0.0] * 4],
}


@pytest.mark.parametrize("meaning", STEP_MEANINGS)
def test_oracle_kind_agrees_with_itself(meaning):
    pool = FakePool(world(CORRECT))
    job = label_job(pool, meaning=meaning)
    labelled = KINDS["oracle"](job)
    assert labelled.values == ORACLE[meaning] == oracle_values([P], SOLUTIONS, meaning)
    out = compare_with_oracle(job, "oracle", labelled, STEP_MEANINGS)
    assert out[f"label/oracle/auc_{meaning}"] == 1.0
    # the first error of every meaning is step_correct's on these four solutions: none, 3, none, 0
    # (prefix_correct's always is; strict_step's is not in general, e.g. after a skipped operation)
    assert out["label/oracle/first_error_agreement"] == 1.0
    assert out["label/oracle/steps"] == STEPS and out["label/oracle/rollouts_per_step"] == 0.0
    assert pool.calls == []  # the oracle spends no rollouts
    # against another meaning it is not perfect: CORRUPTED's steps 1-3 are right under step_correct only
    if meaning == "step_correct":
        assert out["label/oracle/auc_prefix_correct"] < 1.0


def test_mc_labels_compared_with_the_oracle_by_hand():
    job = label_job(FakePool(world(CORRECT)))
    out = compare_with_oracle(job, "mc_hard", KINDS["mc_hard"](job), ("step_correct",))
    # MC_HARD against ORACLE["step_correct"], step by step:
    #   negatives (wrong steps): WRONG[3] labelled 0, CORRUPTED[0] labelled 1;
    #   positives (12): labelled 0 are GOLD[2], WRONG[2], CORRUPTED[2], CORRUPTED[3] (4), the other 8 labelled 1.
    # AUC = (wins + ties / 2) / (12 x 2): against WRONG[3] 8 wins and 4 ties, against CORRUPTED[0] 8 ties
    #     = (8 + 4 / 2 + 8 / 2) / 24 = 14 / 24
    assert out["label/mc_hard/auc_step_correct"] == pytest.approx(14 / 24)
    # first label < 0.5 against the oracle's first wrong step: GOLD 2 vs none, WRONG 2 vs 3, PARTIAL none vs
    # none, CORRUPTED 2 vs 0: one agreement in four
    assert out["label/mc_hard/first_error_agreement"] == 0.25


def test_corrupt_kind_half_corrupted_first_error_at_the_corrupted_step():
    problems = ArithmeticTask(min_steps=2, max_steps=5, seed=0).sample(6, "train", seed=11)
    job = label_job(FakePool(world(CORRECT)), problems=problems, samples_per_problem=4, seed=3, solutions=[])
    labelled = KINDS["corrupt"](job)
    assert len(labelled.solutions) == 6 * 4 and labelled.cost["rollouts"] == 0
    rng = random.Random(3)  # the kind's draws, in its order: the even samples of each problem are corrupted
    for k, (node, values) in enumerate(zip(labelled.solutions, labelled.values, strict=True)):
        problem, s = problems[k // 4], k % 4
        assert node.problem == k // 4 and node.done
        if s % 2 == 0:
            corrupted = corrupt_solution(problem, rng)
            assert "".join(node.steps) == corrupted.text
            # step_correct: only the corrupted step is wrong (the later ones compute right from it)
            assert values == [float(j != corrupted.step) for j in range(len(node.steps))]
            assert not Judge(problems).correct(node)
        else:
            assert "".join(node.steps) == solution_text(problem)
            assert values == [1.0] * len(node.steps)
            assert Judge(problems).correct(node)
    rows = examples(job, labelled)
    assert len(rows) == 24
    assert rows[1].prompt == prompt_text(problems[0])
    assert rows[1].steps == solution_text(problems[0]).split(NL)[:-1]  # without the delimiter
    assert rows[1].labels == labelled.values[1]


def test_examples_skip_solutions_without_steps():
    job = label_job(FakePool(world(CORRECT)), solutions=[Node(0, (), True), Node(0, GOLD, True)])
    labelled = KINDS["oracle"](job)
    [row] = examples(job, labelled)
    assert (row.prompt, row.steps, row.labels) == (prompt_text(P), ["1+5=6 -8+4", "6-8=8 +4", "8+4=2", "A2"], [1.0] * 4)


# ---------------------------------------------------------------- names, budgets, summaries


def test_every_config_name_is_bound():
    assert sorted(KINDS) == sorted(LABEL_KINDS) and len(KINDS) == len(LABEL_KINDS)
    assert tuple(METHODS) == SEARCH_METHODS


def test_budgets_of():
    assert budgets_of("greedy", [16, 4, 1]) == [1]
    assert budgets_of("greedy", [4]) == [1]  # greedy runs at 1 even when 1 is not a budget
    for method in SEARCH_METHODS[1:]:
        assert budgets_of(method, [16, 4, 4, 1]) == [1, 4, 16]


def test_curves_of_a_summary(tmp_path):
    summary = {
        "search/problems": 4,
        "search/prm": "/runs/x@y/prm",  # a value may hold "@": only keys are parsed
        "search/greedy@1": 0.5,
        "search/greedy@1/tokens": 10.0,
        "search/beam@4": 0.75,
        "search/beam@4/tokens": 160.0,
        "search/beam@1": 0.25,
        "search/beam@1/tokens": 40.0,
        "time_s": 3.0,
    }
    assert _curves(summary) == {"greedy": [(1, 0.5, 10.0)], "beam": [(1, 0.25, 40.0), (4, 0.75, 160.0)]}
    path = plot_search(summary, str(tmp_path / "search.png"))
    assert path == str(tmp_path / "search.png") and (tmp_path / "search.png").stat().st_size > 0


# ---------------------------------------------------------------- every method on a fake world

# Two problems; the policy writes the gold solution step by step, except that sample 1 of a full
# solution from the root ends with a wrong answer line. The PRM scores 0.9 a step without a '7', 0.1 with.
PROBLEMS = [P, make_problem([2, 3], ["+"])]  # 2+3=5: "2+3=5\n", "A5\n"
GOLDS = [text_steps(solution_text(p), NL) for p in PROBLEMS]


def policy(req, i, sampling):
    g = next(k for k, p in enumerate(PROBLEMS) if p.prompt_id == req.prompt_id)
    k = len(text_steps(req.prefix, NL))
    if sampling["stop"]:
        return GOLDS[g][k]
    rest = "".join(GOLDS[g][k:])
    return rest[: -len("A2\n")] + "A7\n" if i == 1 and k == 0 else rest


def search_run(pool) -> SearchRun:
    requests = [PromptRequest(p.prompt_id, i, prompt_text(p), p.answer) for i, p in enumerate(PROBLEMS)]
    return SearchRun(
        roots=[Node(i, (), False) for i in range(len(PROBLEMS))],
        judge=Judge(PROBLEMS),
        scorer=PrmScorer(FakePrm(), [prompt_text(p) for p in PROBLEMS], NL),
        make_expander=lambda t: Expander(pool, requests, NL, t, 32, 0, is_final=arithmetic_final),
        temperature=1.0,
        aggregation="min",
        expansions=2,
        mcts_children=2,
        c_uct=1.0,
        threshold=0.5,
        max_depth=12,
        max_budget=3,
    )


@pytest.mark.parametrize("method", SEARCH_METHODS)
def test_every_method_runs_on_a_fake_world(method):
    pool = FakePool(policy)
    run = search_run(pool)
    for n in budgets_of(method, [1, 3]):
        chosen, tokens = METHODS[method](run, n)
        assert [c.problem for c in chosen] == [0, 1] and all(c.done for c in chosen)
        assert len(tokens) == 2 and all(t > 0 for t in tokens)
        if method != "majority" or n > 1:  # majority@1 of a sample may be the wrong one (it is not here)
            assert all(run.judge.correct(c) for c in chosen), (method, n, chosen)
    if method == "greedy":
        assert [s["temperature"] for _, s in pool.calls] == [0.0]


def test_sampling_methods_share_one_draw_and_charge_the_first_n():
    pool = FakePool(policy)
    run = search_run(pool)
    chosen1, tok1 = METHODS["majority"](run, 1)
    chosen3, tok3 = METHODS["bon_min"](run, 3)
    METHODS["weighted"](run, 2)
    assert len(pool.calls) == 1 and pool.calls[0][1]["n"] == 3  # max_budget samples, drawn once
    # every sample (the wrong-answer one too) has as many characters, i.e. tokens, as the gold text
    gold = [len(solution_text(p)) for p in PROBLEMS]
    assert tok1 == gold and tok3 == [3 * g for g in gold]
    # sample 1 ends in "A7" (PRM 0.1): best-of-3 by the min step value passes it over
    assert [c.steps for c in chosen3] == GOLDS == [c.steps for c in chosen1]
