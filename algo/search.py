"""Tree search over reasoning steps: the one core for test-time search and Monte-Carlo step labels.

The algorithms never see a model. They get callbacks and work in LOCKSTEP over a batch of problems: each
round makes one `expand` call over every problem's frontier and one `score` call over the new nodes, so
the caller can batch them into one vLLM generate / one PRM forward.

- expand(nodes, n, one_step) -> n children per node (same order). one_step=True: each child is the parent
  plus one step (or a done node if the policy ended); one_step=False: each child is sampled to the end
  (done). Children keep the parent's problem index and extend its steps.
- score(nodes) -> the PRM probability of every step of each node (len == len(node.steps)).
- answer_of(node) -> the final answer, or None if there is none.

Selection rules (answers from N candidates): `majority` (self-consistency, Wang et al. 2203.11171),
`best_of_n` (PRM best-of-N, Lightman et al. 2305.20050), `weighted_vote` (PRM-weighted majority,
Uesato et al. 2211.14275 / Math-Shepherd, Wang et al. 2312.08935).
Searches: `sample_to_end`, `beam_search` (step-level beam search as in Snell et al. 2408.03314),
`mcts` (UCT, Kocsis & Szepesvari 2006, over steps as in rStar 2408.06195 / ReST-MCTS* 2406.03816),
`rejection_search` (per-step PRM rejection sampling). Labels: `mc_step_values` (Math-Shepherd 2312.08935).

Conventions: ties go to the first in order (no RNG anywhere, so every search is deterministic given
deterministic callbacks); a callback with an empty batch is never called; the aggregate of an empty
list of step values is 0.0 (a candidate without a single scored step never beats a scored one).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from algo import registry

Steps = tuple[str, ...]  # step texts of a partial or full solution, each including its delimiter


@dataclass(frozen=True)
class Node:
    problem: int  # index of the problem in the batch (roots are Node(i, (), False))
    steps: Steps
    done: bool  # the solution ended (answer / EOS / length): it cannot be extended


Expand = Callable[[list[Node], int, bool], list[list[Node]]]  # (nodes, n, one_step) -> n children per node
Score = Callable[[list[Node]], list[list[float]]]  # PRM probability per step of each node
AnswerOf = Callable[[Node], str | None]
Scored = tuple[Node, list[float]]  # a node with its step values

# ---------------------------------------------------------------- aggregation and checked callbacks


def _product(values: list[float]) -> float:
    return math.prod(values) if values else 0.0


def _min(values: list[float]) -> float:
    return min(values) if values else 0.0


def _last(values: list[float]) -> float:
    return values[-1] if values else 0.0


# How a solution's step values become one score (Lightman et al. 2305.20050 use product; min and last are
# the other common choices, Snell et al. 2408.03314). Empty -> 0.0 for all three (see the module docstring).
AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {"product": _product, "min": _min, "last": _last}


def _check_how(how: str) -> None:
    if how not in AGGREGATIONS:
        raise registry.unknown("aggregation", how, tuple(AGGREGATIONS))


def aggregate(values: list[float], how: str) -> float:
    """One score from a solution's step values; `how` names an entry of AGGREGATIONS."""
    _check_how(how)
    return AGGREGATIONS[how](values)


def _positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _expand(expand: Expand, nodes: list[Node], n: int, one_step: bool) -> list[list[Node]]:
    """expand() with its contract checked: a caller's batching bug must not silently mix problems up."""
    if not nodes:
        return []
    out = expand(nodes, n, one_step)
    if len(out) != len(nodes) or any(len(kids) != n for kids in out):
        got = [len(kids) for kids in out]
        raise ValueError(f"expand must return {n} children for each of {len(nodes)} nodes, got {got}")
    for parent, kids in zip(nodes, out, strict=True):
        for kid in kids:
            if kid.problem != parent.problem or kid.steps[: len(parent.steps)] != parent.steps:
                raise ValueError(f"expand returned {kid} which does not extend its parent {parent}")
            if not one_step and not kid.done:
                raise ValueError(f"expand(one_step=False) must return done nodes, got {kid}")
    return out


def _score(score: Score, nodes: list[Node]) -> list[list[float]]:
    """score() with its contract checked: one value per step of each node."""
    if not nodes:
        return []
    out = score(nodes)
    if len(out) != len(nodes) or any(len(v) != len(x.steps) for v, x in zip(out, nodes, strict=True)):
        want = [len(x.steps) for x in nodes]
        raise ValueError(f"score must return one value per step, want lengths {want}, got {[len(v) for v in out]}")
    return [list(v) for v in out]


def _argmax(keys: list[float]) -> int:
    return max(range(len(keys)), key=lambda i: (keys[i], -i))  # ties -> first


def _best(pool: list[Scored], how: str) -> Node:
    return pool[_argmax([aggregate(v, how) for _, v in pool])][0]


# ---------------------------------------------------------------- selection among full candidates


def majority(candidates: list[Node], answer_of: AnswerOf) -> Node:
    """Self-consistency (Wang et al. 2203.11171): the first candidate with the most common non-None answer.

    Ties between answers go to the one seen first; if no candidate has an answer, the first candidate.
    """
    if not candidates:
        raise ValueError("candidates must not be empty")
    answers = [answer_of(c) for c in candidates]
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return candidates[0]
    top = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == top)
    return candidates[answers.index(winner)]


def _aggregated(candidates: list[Node], values: list[list[float]], how: str) -> list[float]:
    _check_how(how)
    if not candidates:
        raise ValueError("candidates must not be empty")
    if len(values) != len(candidates):
        raise ValueError(f"values has {len(values)} rows for {len(candidates)} candidates")
    return [aggregate(v, how) for v in values]


def best_of_n(candidates: list[Node], values: list[list[float]], how: str) -> Node:
    """PRM best-of-N (Lightman et al. 2305.20050): the candidate with the best aggregated step values."""
    return candidates[_argmax(_aggregated(candidates, values, how))]


def weighted_vote(candidates: list[Node], values: list[list[float]], how: str, answer_of: AnswerOf) -> Node:
    """PRM-weighted majority (Uesato et al. 2211.14275; Math-Shepherd, Wang et al. 2312.08935).

    Each non-None answer gets the sum of its candidates' aggregated scores; the winner (ties: first seen)
    is represented by its highest-scored candidate. With no answer at all this is best-of-N.
    """
    scores = _aggregated(candidates, values, how)
    answers = [answer_of(c) for c in candidates]
    totals: dict[str, float] = {}  # insertion order = first occurrence, which max() keeps on ties
    for a, s in zip(answers, scores, strict=True):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + s
    if not totals:
        return candidates[_argmax(scores)]
    winner = max(totals, key=lambda a: totals[a])
    mine = [i for i, a in enumerate(answers) if a == winner]
    return candidates[mine[_argmax([scores[i] for i in mine])]]


# ---------------------------------------------------------------- searches


def sample_to_end(roots: list[Node], n: int, expand: Expand) -> list[list[Node]]:
    """n full solutions per root in one expand call (the candidates of majority / best-of-N)."""
    _positive(n=n)
    return _expand(expand, roots, n, False)


def _check_roots(roots: list[Node]) -> None:
    done = [i for i, r in enumerate(roots) if r.done]
    if done:
        raise ValueError(f"roots must not be done (roots {done} are)")


def _complete(roots: list[Node], expand: Expand, score: Score) -> list[Scored]:
    """Each node sampled once to the end (one expand call) and scored (one score call)."""
    ends = [kids[0] for kids in _expand(expand, roots, 1, False)]
    return list(zip(ends, _score(score, ends), strict=True))


def beam_search(
    roots: list[Node], *, width: int, expansions: int, max_depth: int, expand: Expand, score: Score, how: str
) -> list[Node]:
    """Step-level beam search guided by a PRM (as in Snell et al. 2408.03314), one Node per root.

    Round 0 expands each root into width*expansions one-step children, later rounds each live beam into
    `expansions`. Candidates that are done go to their problem's pool, and each one in the pool takes a
    beam away: the top `width - len(pool)` live candidates by the PRM value of their last step survive.
    After max_depth rounds (or when no problem has a live beam) the live beams are sampled to the end and
    scored; the answer is the pool member with the best aggregate(values, how).
    """
    _positive(width=width, expansions=expansions, max_depth=max_depth)
    _check_how(how)
    _check_roots(roots)
    pools: list[list[Scored]] = [[] for _ in roots]
    beams: list[list[Node]] = [[r] for r in roots]
    for depth in range(max_depth):
        flat = [(p, b) for p, bs in enumerate(beams) for b in bs]
        if not flat:
            break
        kids = _expand(expand, [b for _, b in flat], width * expansions if depth == 0 else expansions, True)
        cands = [(p, kid) for (p, _), ks in zip(flat, kids, strict=True) for kid in ks]
        values = _score(score, [kid for _, kid in cands])
        live: list[list[Scored]] = [[] for _ in roots]
        for (p, kid), v in zip(cands, values, strict=True):
            (pools[p] if kid.done else live[p]).append((kid, v))
        for p, scored in enumerate(live):
            keep = max(0, width - len(pools[p]))
            ranked = sorted(scored, key=lambda s: -_last(s[1]))  # stable: ties keep the first
            beams[p] = [node for node, _ in ranked[:keep]]
    flat = [(p, b) for p, bs in enumerate(beams) for b in bs]
    for (p, _), ended in zip(flat, _complete([b for _, b in flat], expand, score), strict=True):
        pools[p].append(ended)
    return [_best(pool, how) for pool in pools]


@dataclass(eq=False)
class _Tree:
    """A search-tree vertex: visit count N and total value W (UCT statistics)."""

    node: Node
    values: list[float]  # PRM value of every step (the root has none of its own to score)
    parent: _Tree | None = None
    kids: list[_Tree] = field(default_factory=list)
    visits: int = 0
    total: float = 0.0

    def uct(self, c_uct: float) -> float:
        if self.visits == 0 or self.parent is None:
            return math.inf  # unvisited children first
        explore = math.sqrt(math.log(self.parent.visits) / self.visits)
        return self.total / self.visits + c_uct * explore

    def walk(self) -> list[_Tree]:
        out = [self]
        for kid in self.kids:
            out += kid.walk()
        return out


def _select(root: _Tree, children: int, c_uct: float) -> _Tree:
    """Descend by UCT while the vertex is fully expanded and not done (ties: first child)."""
    t = root
    while len(t.kids) >= children and not t.node.done:
        ucts = [k.uct(c_uct) for k in t.kids]
        t = t.kids[_argmax(ucts)]
    return t


def _backprop(t: _Tree | None, value: float) -> None:
    while t is not None:
        t.visits += 1
        t.total += value
        t = t.parent


def _most_visited_leaf(root: _Tree) -> _Tree:
    t = root
    while t.kids:
        t = t.kids[_argmax([float(k.visits) for k in t.kids])]
    return t


def mcts(
    roots: list[Node],
    *,
    simulations: int,
    children: int,
    c_uct: float,
    max_depth: int,
    expand: Expand,
    score: Score,
    how: str,
) -> list[Node]:
    """Monte-Carlo tree search over steps: UCT (Kocsis & Szepesvari 2006) with a PRM as the leaf value,
    as used for reasoning in rStar (2408.06195) and ReST-MCTS* (2406.03816). One Node per root.

    Each simulation selects, in every problem's tree, a vertex by UCT = Q + c_uct*sqrt(ln N_parent/N_child)
    (descending while a vertex has `children` children and is not done), adds ONE one-step child to it
    (one expand call and one score call for all problems) and backpropagates the child's last-step PRM
    value (N += 1, W += value). A selected vertex that cannot grow (done, or `max_depth` steps below the
    root) backpropagates its own value again. The answer is the done vertex with the best
    aggregate(values, how); a problem without one has the deepest vertex of its most-visited path sampled
    to the end (one batched expand call) and scored.
    """
    _positive(simulations=simulations, children=children, max_depth=max_depth)
    if not (c_uct >= 0 and math.isfinite(c_uct)):
        raise ValueError(f"c_uct must be finite and >= 0, got {c_uct}")
    _check_how(how)
    _check_roots(roots)
    trees = [_Tree(r, []) for r in roots]
    for _ in range(simulations):
        grow: list[_Tree] = []
        for root, tree in zip(roots, trees, strict=True):
            t = _select(tree, children, c_uct)
            if t.node.done or len(t.node.steps) - len(root.steps) >= max_depth:
                _backprop(t, _last(t.values))  # nothing to add: re-evaluate, as for a terminal state
            else:
                grow.append(t)
        kids = [ks[0] for ks in _expand(expand, [t.node for t in grow], 1, True)]
        for t, kid, v in zip(grow, kids, _score(score, kids), strict=True):
            leaf = _Tree(kid, v, parent=t)
            t.kids.append(leaf)
            _backprop(leaf, _last(v))
    answers: list[Node | None] = []
    for tree in trees:
        done = [(t.node, t.values) for t in tree.walk() if t.node.done]
        answers.append(_best(done, how) if done else None)
    todo = [i for i, a in enumerate(answers) if a is None]
    ended = _complete([_most_visited_leaf(trees[i]).node for i in todo], expand, score)
    for i, (node, _) in zip(todo, ended, strict=True):
        answers[i] = node
    return [a for a in answers if a is not None]


def rejection_search(
    roots: list[Node], *, threshold: float, max_tries: int, max_depth: int, expand: Expand, score: Score
) -> list[Node]:
    """Per-step PRM rejection sampling, one Node per root.

    Each round proposes one step for every live problem (one expand call, one score call); a proposal is
    accepted if its last-step value is >= threshold. After `max_tries` rejected proposals for the same
    step the best-scoring one among them (ties: first) is accepted. A problem stops when its node is done;
    one that reaches `max_depth` steps without finishing is sampled to the end (one batched expand call).
    """
    _positive(max_tries=max_tries, max_depth=max_depth)
    _check_roots(roots)
    current = list(roots)
    tries: list[list[Scored]] = [[] for _ in roots]  # the proposals so far for each problem's next step

    def live(i: int) -> bool:
        return not current[i].done and len(current[i].steps) - len(roots[i].steps) < max_depth

    while todo := [i for i in range(len(roots)) if live(i)]:
        kids = [ks[0] for ks in _expand(expand, [current[i] for i in todo], 1, True)]
        for i, kid, v in zip(todo, kids, _score(score, kids), strict=True):
            tries[i].append((kid, v))
            if _last(v) >= threshold:
                current[i] = kid
            elif len(tries[i]) >= max_tries:  # out of tries: the best proposal rather than none
                current[i] = tries[i][_argmax([_last(w) for _, w in tries[i]])][0]
            else:
                continue
            tries[i] = []
    todo = [i for i, node in enumerate(current) if not node.done]
    for i, kids in zip(todo, _expand(expand, [current[i] for i in todo], 1, False), strict=True):
        current[i] = kids[0]
    return current


def mc_step_values(solutions: list[Node], k: int, expand: Expand, correct: Callable[[Node], bool]) -> list[list[float]]:
    """Monte-Carlo step values (Math-Shepherd, Wang et al. 2312.08935): value of step i of a solution is the
    fraction of k completions from its prefix steps[:i+1] that are correct.

    All prefixes of all solutions are expanded in ONE expand(prefixes, k, False) call. A prefix that is the
    whole solution and done is not expanded: its value is 1.0 if correct(solution) else 0.0. Hard labels
    (value > 0) are the caller's choice.
    """
    _positive(k=k)
    # a done solution's last prefix is the solution itself: its completion is already known
    opened = [max(0, len(sol.steps) - 1) if sol.done else len(sol.steps) for sol in solutions]
    prefixes = [
        Node(sol.problem, sol.steps[: i + 1], False) for sol, m in zip(solutions, opened, strict=True) for i in range(m)
    ]
    rollouts = iter(_expand(expand, prefixes, k, False))
    out: list[list[float]] = []
    for sol, m in zip(solutions, opened, strict=True):
        row = [sum(correct(c) for c in next(rollouts)) / k for _ in range(m)]
        if sol.done and sol.steps:
            row.append(1.0 if correct(sol) else 0.0)
        out.append(row)
    return out
