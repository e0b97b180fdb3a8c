"""Tree search over steps: searches worked by hand on a tiny deterministic world, lockstep, call counts, errors.

The world: a step is one character; a digit step ends the solution (done) and is its answer. A path is the
steps joined ("cf2" = steps c, f, 2). KIDS[path] lists the one-step children, handed out in turn (the i-th
one-step sample of a path is KIDS[path][i % len]); a sample to the end follows ENDS[path] in turn if given,
else the first kid at every step (greedy). PRM[path] is the PRM value of the path's last step (0.5 if
absent). Each problem has its own tables.
"""

import math
from collections import Counter

import pytest

from algo.search import (
    AGGREGATIONS,
    Node,
    aggregate,
    beam_search,
    best_of_n,
    majority,
    mc_step_values,
    mcts,
    rejection_search,
    sample_to_end,
    weighted_vote,
)


def path(node):
    return "".join(node.steps)


def answer_of(node):
    return node.steps[-1] if node.done and node.steps and node.steps[-1].isdigit() else None


class World:
    def __init__(self, kids, prm, ends=None):
        self.kids, self.prm, self.ends = kids, prm, ends or [{} for _ in kids]  # one table per problem
        self.turn = Counter()
        self.calls = []  # ("expand", number of nodes, n, one_step) / ("score", number of nodes)

    def child(self, node, tail):
        return Node(node.problem, node.steps + tuple(tail), tail[-1].isdigit())

    def next(self, table, node, one_step):
        options = table[node.problem][path(node)]
        key = (node.problem, path(node), one_step)
        self.turn[key] += 1
        return options[(self.turn[key] - 1) % len(options)]

    def greedy(self, node):
        while not node.done:
            node = self.child(node, self.kids[node.problem][path(node)][0])
        return node

    def expand(self, nodes, n, one_step):
        self.calls.append(("expand", len(nodes), n, one_step))
        out = []
        for x in nodes:
            if one_step:
                out.append([self.child(x, self.next(self.kids, x, True)) for _ in range(n)])
            elif path(x) in self.ends[x.problem]:
                out.append([self.child(x, self.next(self.ends, x, False)) for _ in range(n)])
            else:
                out.append([self.greedy(x) for _ in range(n)])
        return out

    def score(self, nodes):
        self.calls.append(("score", len(nodes)))
        return [[self.prm[x.problem].get(path(x)[: i + 1], 0.5) for i in range(len(x.steps))] for x in nodes]

    def count(self, kind):
        return sum(call[0] == kind for call in self.calls)


def roots(n):
    return [Node(i, (), False) for i in range(n)]


# ------------------------------------------------------------------ aggregation and selection


def test_aggregations_worked():
    v = [0.9, 0.5, 0.8]
    assert aggregate(v, "product") == pytest.approx(0.36)  # .9 * .5 * .8
    assert aggregate(v, "min") == 0.5
    assert aggregate(v, "last") == 0.8
    for how in AGGREGATIONS:  # no scored step: never beats a scored candidate
        assert aggregate([], how) == 0.0
    with pytest.raises(ValueError, match="unknown aggregation 'mean'; valid: product, min, last"):
        aggregate(v, "mean")


# Four candidates: answers 1, 2, 2, none; one step each, PRM values .9, .5, .45, .99.
CANDS = [Node(0, ("1",), True), Node(0, ("2",), True), Node(0, ("x2",), True), Node(0, ("y",), True)]
CAND_VALUES = [[0.9], [0.5], [0.45], [0.99]]


def cand_answer(node):
    return node.steps[0][-1] if node.steps[0][-1].isdigit() else None


def test_majority_best_of_n_weighted_vote_worked():
    # votes: "2" twice, "1" once -> the first "2"
    assert majority(CANDS, cand_answer) is CANDS[1]
    # best single score: .99, the one without an answer
    assert best_of_n(CANDS, CAND_VALUES, "last") is CANDS[3]
    # sums: "1" .9, "2" .5 + .45 = .95 -> "2"; its best-scored candidate is CANDS[1] (.5 > .45)
    assert weighted_vote(CANDS, CAND_VALUES, "last", cand_answer) is CANDS[1]
    # with CANDS[2] at .35 instead: "2" sums .85 < .9 -> "1"
    assert weighted_vote(CANDS, [[0.9], [0.5], [0.35], [0.99]], "last", cand_answer) is CANDS[0]


def test_selection_ties_and_no_answers():
    one, two = Node(0, ("1",), True), Node(0, ("2",), True)
    assert majority([one, two, Node(0, ("2b",), True), Node(0, ("1b",), True)], lambda x: x.steps[0][0]) is one
    no = [Node(0, ("a",), True), Node(0, ("b",), True)]
    assert majority(no, lambda x: None) is no[0]
    assert best_of_n([one, two], [[0.5], [0.5]], "product") is one
    # no answers: weighted vote falls back to best-of-N
    assert weighted_vote(no, [[0.2], [0.7]], "min", lambda x: None) is no[1]


def test_best_of_n_ignores_candidate_order():
    order = [2, 0, 3, 1]
    assert best_of_n([CANDS[i] for i in order], [CAND_VALUES[i] for i in order], "min") is CANDS[3]
    assert weighted_vote([CANDS[i] for i in order], [CAND_VALUES[i] for i in order], "min", cand_answer) is CANDS[1]


# ------------------------------------------------------------------ beam search

KIDS0 = {"": "abcd", "a": "e1", "c": "fg", "cf": "2h", "ae": "4"}
PRM0 = {"a": 0.9, "b": 0.4, "c": 0.7, "d": 0.6, "ae": 0.3, "a1": 0.85, "cf": 0.8, "cg": 0.6}
PRM0 |= {"cf2": 0.95, "cfh": 0.9, "ae4": 0.99}
# Problem 1: every path ends after one step; 5 is the better answer.
KIDS1 = {"": "56"}
PRM1 = {"5": 0.8, "6": 0.3}


def test_beam_search_worked():
    # width 2, expansions 2. Round 0: root -> a .9, b .4, c .7, d .6; keep a, c.
    # Round 1: a -> ae .3, a1 (done, pool); c -> cf .8, cg .6. Pool has 1: keep 2 - 1 = 1 live: cf.
    # Round 2: cf -> cf2 (done, pool), cfh .9. Pool has 2: no live beam left, stop (max_depth 3 not reached).
    # Pool: a1 (.9, .85): product .765, min .85, last .85; cf2 (.7, .8, .95): product .532, min .7, last .95.
    for how, want in (("product", "a1"), ("min", "a1"), ("last", "cf2")):
        w = World([KIDS0], [PRM0])
        (got,) = beam_search(roots(1), width=2, expansions=2, max_depth=3, expand=w.expand, score=w.score, how=how)
        assert path(got) == want and got.done, how
        assert [c for c in w.calls if c[0] == "expand"] == [
            ("expand", 1, 4, True),
            ("expand", 2, 2, True),
            ("expand", 1, 2, True),
        ]
        assert w.count("score") == 3


def test_beam_search_completes_live_beams_at_max_depth():
    # max_depth 1: beams a, c are sampled to the end greedily: ae4 (.9, .3, .99), cf2 (.7, .8, .95)
    # product: .267 vs .532 -> cf2; last: .99 vs .95 -> ae4
    for how, want in (("product", "cf2"), ("last", "ae4")):
        w = World([KIDS0], [PRM0])
        (got,) = beam_search(roots(1), width=2, expansions=2, max_depth=1, expand=w.expand, score=w.score, how=how)
        assert path(got) == want
        assert w.calls[-2:] == [("expand", 2, 1, False), ("score", 2)]
    # max_depth 2: after round 1 the pool holds a1 and cf is live: cf -> cf2; pool a1, cf2 as above
    w = World([KIDS0], [PRM0])
    (got,) = beam_search(roots(1), width=2, expansions=2, max_depth=2, expand=w.expand, score=w.score, how="last")
    assert path(got) == "cf2" and w.count("expand") == 3


# ------------------------------------------------------------------ MCTS

KIDS_M = {"": "ab", "a": "1c", "b": "2d", "ac": "7", "c": "8"}
PRM_M = {"a": 0.6, "b": 0.4, "a1": 0.9, "ac": 0.5, "b2": 0.95}


def run_mcts(sims, how="product", max_depth=3, kids=KIDS_M):
    w = World([kids], [PRM_M])
    (got,) = mcts(
        roots(1), simulations=sims, children=2, c_uct=1.0, max_depth=max_depth, expand=w.expand, score=w.score, how=how
    )
    return path(got), w


def test_mcts_worked():
    # sim 1, 2: root is not fully expanded: root -> a (.6), root -> b (.4). Root N 2, W 1.0.
    # sim 3: UCT a = .6 + sqrt(ln 2 / 1) = 1.433, b = .4 + .833 = 1.233 -> a; a -> a1 (done, .9). a N 2 W 1.5.
    # sim 4: a = 1.5/2 + sqrt(ln 3 / 2) = .75 + .741 = 1.491, b = .4 + sqrt(ln 3) = 1.448 -> a; a -> ac (.5).
    # sim 5: root N 4: a = 2.0/3 + sqrt(ln 4 / 3) = .667 + .680 = 1.347, b = .4 + 1.177 = 1.577 -> b; b -> b2 (.95).
    # Done vertices: a1 (.6, .9): product .54, last .9; b2 (.4, .95): product .38, last .95.
    got, w = run_mcts(5, "product")
    assert got == "a1"
    assert w.calls == [("expand", 1, 1, True), ("score", 1)] * 5  # one expand + one score per simulation
    assert run_mcts(5, "last")[0] == "b2"
    # after 4 simulations b2 does not exist yet: a1 is the only done vertex, whatever the aggregation
    assert run_mcts(4, "last")[0] == "a1"


def test_mcts_without_done_vertex_completes_the_most_visited_path():
    # No digit below a or b: a -> c, d; b -> d, e. sims 1, 2 as above; sim 3 picks a -> ac (.5): a N 2, W 1.1.
    # sim 4: a = .55 + sqrt(ln 3 / 2) = 1.291, b = .4 + sqrt(ln 3) = 1.448 -> b -> bd (.5).
    # No done vertex. Most visited: a N 2, b N 2: tie -> a; then its only child ac, sampled to the end: ac7.
    kids = KIDS_M | {"a": "cd", "b": "de"}
    got, w = run_mcts(4, kids=kids)
    assert got == "ac7"
    assert w.calls[-2:] == [("expand", 1, 1, False), ("score", 1)]
    assert w.count("expand") == 5


def test_mcts_max_depth_re_evaluates_without_expanding():
    # max_depth 1: sims 1, 2 add a and b. sim 3 picks a (1.433 > 1.233) but a is at max depth: a's .6 again.
    # sim 4: a = .6 + sqrt(ln 3 / 2) = 1.341, b = .4 + sqrt(ln 3) = 1.448 -> b, .4 again.
    # No done vertex; a N 2, b N 2: tie -> a, sampled to the end: a1. No expand call in sims 3 and 4.
    got, w = run_mcts(4, max_depth=1)
    assert got == "a1"
    assert [c for c in w.calls if c[0] == "expand"] == [("expand", 1, 1, True)] * 2 + [("expand", 1, 1, False)]


# ------------------------------------------------------------------ rejection search

KIDS_R = {"": "abc", "a": "5", "b": "def", "be": "g3", "beg": "4"}
PRM_R = {"a": 0.5, "b": 0.8, "bd": 0.3, "be": 0.6, "bf": 0.6, "beg": 0.95, "beg4": 0.9}


def test_rejection_search_worked():
    # threshold .7, max_tries 3. Step 1: a .5 rejected, b .8 accepted (2 rounds).
    # Step 2: bd .3, be .6, bf .6 all rejected; 3 tries: the best, be (tie with bf: first). (3 rounds)
    # Step 3: beg .95 accepted. Step 4: beg4 .9 accepted, done. 7 rounds, no completion.
    w = World([KIDS_R], [PRM_R])
    (got,) = rejection_search(roots(1), threshold=0.7, max_tries=3, max_depth=4, expand=w.expand, score=w.score)
    assert path(got) == "beg4" and got.done
    assert w.calls == [("expand", 1, 1, True), ("score", 1)] * 7
    # max_depth 3: beg is not done after 3 steps: sampled to the end (greedy: beg4), not scored
    w = World([KIDS_R], [PRM_R])
    (got,) = rejection_search(roots(1), threshold=0.7, max_tries=3, max_depth=3, expand=w.expand, score=w.score)
    assert path(got) == "beg4"
    assert w.count("score") == 6 and w.calls[-1] == ("expand", 1, 1, False)
    # max_tries 1: every first proposal is accepted, however low: a (.5), then a5 (done)
    w = World([KIDS_R], [PRM_R])
    (got,) = rejection_search(roots(1), threshold=0.99, max_tries=1, max_depth=4, expand=w.expand, score=w.score)
    assert path(got) == "a5" and w.count("expand") == 2


# ------------------------------------------------------------------ Monte-Carlo step values


def test_mc_step_values_worked():
    ends = {"a": ["b1", "c2"], "ab": ["1", "1"], "ac": ["2", "3"]}
    w = World([{}], [{}], ends=[ends])
    sols = [Node(0, tuple("ab1"), True), Node(0, tuple("ac2"), True), Node(0, ("a",), False), Node(0, (), True)]
    got = mc_step_values(sols, 2, w.expand, lambda x: answer_of(x) == "1")
    # ab1: a -> ab1 (right), ac2 (wrong): .5; ab -> ab1, ab1: 1; ab1 itself is done and right: 1
    # ac2: a -> ab1, ac2 again (turns 3, 4): .5; ac -> ac2, ac3: 0; ac2 itself is wrong: 0
    # a (not done, truncated): its one prefix is expanded: .5. The empty solution has no step.
    assert got == [[0.5, 1.0, 1.0], [0.5, 0.0, 0.0], [0.5], []]
    assert w.calls == [("expand", 5, 2, False)]  # one batched call for all 5 open prefixes


# ------------------------------------------------------------------ lockstep: a batch is its problems alone

# name -> (search, problem 0's tables); problem 1 is KIDS1 / PRM1 for all: its answer is 5 every time
SEARCHES = {
    "beam": (
        lambda r, w: beam_search(r, width=2, expansions=2, max_depth=3, expand=w.expand, score=w.score, how="min"),
        (KIDS0, PRM0),
    ),
    "mcts": (
        lambda r, w: mcts(
            r, simulations=5, children=2, c_uct=1.0, max_depth=3, expand=w.expand, score=w.score, how="last"
        ),
        (KIDS_M, PRM_M),
    ),
    "rejection": (
        lambda r, w: rejection_search(r, threshold=0.7, max_tries=3, max_depth=4, expand=w.expand, score=w.score),
        (KIDS_R, PRM_R),
    ),
    "sample": (lambda r, w: [ks[0] for ks in sample_to_end(r, 2, w.expand)], (KIDS0, PRM0)),
}


@pytest.mark.parametrize("name", SEARCHES)
def test_lockstep_batch_equals_each_problem_alone(name):
    search, (kids, prm) = SEARCHES[name]

    def world():
        return World([kids, KIDS1], [prm, PRM1])

    together = world()
    both = search(roots(2), together)
    alone = [world() for _ in range(2)]
    assert both == [search([Node(i, (), False)], alone[i])[0] for i in range(2)]
    assert path(both[1]) == "5"
    # one call per round over every problem: as many calls as the problem needing the most rounds
    assert together.count("expand") == max(w.count("expand") for w in alone)
    assert together.count("score") == max(w.count("score") for w in alone)


# ------------------------------------------------------------------ errors


def test_errors_name_the_argument():
    w = World([KIDS0], [PRM0])
    kw = dict(expand=w.expand, score=w.score, how="product")
    with pytest.raises(ValueError, match="width"):
        beam_search(roots(1), width=0, expansions=2, max_depth=3, **kw)
    with pytest.raises(ValueError, match="expansions"):
        beam_search(roots(1), width=2, expansions=0, max_depth=3, **kw)
    with pytest.raises(ValueError, match="unknown aggregation"):
        beam_search(roots(1), width=2, expansions=2, max_depth=3, expand=w.expand, score=w.score, how="mean")
    with pytest.raises(ValueError, match="simulations"):
        mcts(roots(1), simulations=0, children=2, c_uct=1.0, max_depth=3, **kw)
    with pytest.raises(ValueError, match="c_uct"):
        mcts(roots(1), simulations=1, children=2, c_uct=math.nan, max_depth=3, **kw)
    with pytest.raises(ValueError, match="max_tries"):
        rejection_search(roots(1), threshold=0.5, max_tries=0, max_depth=3, expand=w.expand, score=w.score)
    with pytest.raises(ValueError, match="k must be"):
        mc_step_values([], 0, w.expand, bool)
    with pytest.raises(ValueError, match="roots must not be done"):
        beam_search([Node(0, (), True)], width=2, expansions=2, max_depth=3, **kw)
    assert beam_search([], width=2, expansions=2, max_depth=3, **kw) == [] and w.calls == []


def test_callback_contracts_are_checked():
    w = World([KIDS0], [PRM0])
    short = lambda nodes, n, one_step: w.expand(nodes, n, one_step)[:-1]  # noqa: E731
    with pytest.raises(ValueError, match="expand must return 4 children for each of 1 nodes"):
        beam_search(roots(1), width=2, expansions=2, max_depth=3, expand=short, score=w.score, how="min")
    other = lambda nodes, n, one_step: [[Node(x.problem + 1, ("a",), False)] * n for x in nodes]  # noqa: E731
    with pytest.raises(ValueError, match="does not extend its parent"):
        mcts(roots(1), simulations=1, children=2, c_uct=1.0, max_depth=3, expand=other, score=w.score, how="min")
    unfinished = lambda nodes, n, one_step: [[Node(x.problem, x.steps + ("a",), False)] * n for x in nodes]  # noqa: E731
    with pytest.raises(ValueError, match="must return done nodes"):
        sample_to_end(roots(1), 1, unfinished)
    lazy = lambda nodes: [[0.5] for _ in nodes]  # noqa: E731
    with pytest.raises(ValueError, match="one value per step"):
        rejection_search(roots(1), threshold=0.5, max_tries=1, max_depth=3, expand=unfinished, score=lazy)
    w2 = World([KIDS0], [PRM0])
    with pytest.raises(ValueError, match="one value per step"):
        beam_search(roots(1), width=2, expansions=2, max_depth=3, expand=w2.expand, score=lambda n: [], how="min")
