"""RewardWorker: scores every step of a trajectory with named reward sources, combined with weights.

Step sources give a probability per step (oracle step verifier, learned PRM); outcome sources give the
outcome reward (answer checker). Step rewards are the weighted mean of the step sources (so they stay
probabilities for transforms such as log_prob), then the named transform of algo.transforms is applied;
the outcome reward is the weighted sum of the outcome sources. The sources are the entries of
workers/sources.py, each built from its config entry by the method `_<name>_source`; a prm source reads
one of the PRM layouts of tasks/prm_formats.py (`format`: ours, Math-Shepherd 2312.08935's step tag,
Qwen2.5-Math-PRM 2501.07301's separator head).
`score_batch` scores several trajectories with one call per batched source (the PRM: one batched forward
pass per chunk instead of one per trajectory); `score(traj)` is `score_batch([traj])[0]`.
A source that fails is never turned into a number: the trajectory is returned with sample_valid=False and
the error in info["reward_error"], and the driver masks and counts it. Only the trajectory that failed is
masked: a batched call that fails is re-run one trajectory at a time to find which.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from algo.trajectory import Trajectory
from algo.transforms import apply_reward_transform
from engine.process import prepare_process, ray_restarted, role_device, role_dtype
from workers.online_prm import OnlinePrm
from workers.sources import ONLINE_PRM_DIR, SOURCES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A step source returns one probability per step span; an outcome source returns one number.
StepSource = Callable[[Trajectory, list[str]], list[float]]
OutcomeSource = Callable[[Trajectory, list[str]], float]
# The batched form of a step source: one score list per trajectory, for many trajectories in one call.
BatchStepSource = Callable[[list[Trajectory], list[list[str]]], list[list[float]]]

log = logging.getLogger(__name__)


class RewardWorker:
    def __init__(
        self,
        *,
        tokenizer_dir: str,
        sources: list[dict],
        meaning: str,
        transform: str,
        transform_params: dict,
        task_kind: str,
        modulus: int = 10,
        step_delimiter: str = "\n",
        threads: int = 1,
        trust_remote_code: bool = False,
        log_file: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        restore_dir: str | None = None,
    ):
        """dtype (model.dtype) and device (None = the GPU Ray gave this actor, else the CPU) are those of a
        learned source's model (prm); the oracle and outcome sources run no model. restore_dir: the run's
        checkpoints, from which a Ray-restarted worker reloads its online PRM (workers/online_prm.py)."""
        prepare_process(threads, log_file=log_file)
        from transformers import AutoTokenizer

        self.trust_remote_code = trust_remote_code
        self.dtype, self.device = dtype, role_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
        self.meaning, self.transform, self.transform_params = meaning, transform, dict(transform_params)
        self.task_kind, self.modulus, self.delimiter = task_kind, modulus, step_delimiter
        self.step_sources: list[tuple[str, float, StepSource]] = []
        self.outcome_sources: list[tuple[str, float, OutcomeSource]] = []
        # step source -> its batched form, for the sources that have one (the prm)
        self.batched_sources: dict[StepSource, BatchStepSource] = {}
        self.online: OnlinePrm | None = None  # a prm source with online_lr > 0 (at most one)
        for src in sources:
            name, spec = src["name"], SOURCES[src["name"]]
            if spec.task_kinds is not None and task_kind not in spec.task_kinds:
                raise ValueError(f"reward source {name!r} needs task.kind in {spec.task_kinds}, got {task_kind!r}")
            fn = getattr(self, f"_{name}_source")(src)  # the builder of each SOURCES entry
            target = self.step_sources if spec.gives == "step" else self.outcome_sources
            weight = float(src.get("weight", 1.0))
            if not weight >= 0:
                raise ValueError(f"reward source {name!r}: weight {weight} must be >= 0")
            target.append((name, weight, fn))
        if self.step_sources and sum(w for _, w, _ in self.step_sources) <= 0:
            raise ValueError("the step sources' weights sum to 0: their weighted mean is undefined")
        # A bad transform name or parameter is a set-up error, not a reason to mask every sample later.
        apply_reward_transform(transform, torch.full((1, 1), 0.5), torch.ones(1, 1), **self.transform_params)
        if self.online is not None and not sum(w for _, w, _ in self.outcome_sources) > 0:
            raise ValueError("an online prm source learns from outcomes: reward.sources needs an outcome source")
        if self.online is not None and restore_dir and ray_restarted():
            done = sorted(Path(restore_dir).glob(f"step_*/{ONLINE_PRM_DIR}"))
            if done:  # the updates since that checkpoint are lost, as for the critic
                self.online.load(str(done[-1]))

    # ------------------------------------------------------------------------------------------ api --
    def score(self, traj: Trajectory) -> Trajectory:
        return self.score_batch([traj])[0]

    def score_group(self, *trajs: Trajectory) -> list[Trajectory]:
        """score_batch for Ray callers: each trajectory its own argument, so Ray resolves every ObjectRef."""
        return self.score_batch(list(trajs))

    def score_batch(self, trajs: list[Trajectory]) -> list[Trajectory]:
        """Score every trajectory (in place, returned in order); one call per batched source for all of
        them. A failure masks its own trajectory only. info["reward_s"] is each one's share of the batch
        time, so summed over trajectories it stays the compute time."""
        t0 = time.time()
        texts: dict[int, list[str]] = {}  # step texts of the trajectories still being scored
        errors: dict[int, Exception] = {}
        for i, traj in enumerate(trajs):
            try:
                # Decoding is inside the try: ids the tokenizer cannot decode mask the sample. Pieces of a
                # multi-byte character decode to U+FFFD, which the sources see as ordinary (wrong) text.
                step_texts = [_decode(self.tokenizer, traj.response_ids[s:e]) for s, e in traj.step_spans]
                traj.info.update(self._oracle_labels(traj, step_texts))
                texts[i] = step_texts
            except Exception as e:  # noqa: BLE001 - any source failure masks the sample, it never becomes a number
                errors[i] = e
        step_scores: dict[int, list[list[float]]] = {i: [] for i in texts}
        for name, _, fn in self.step_sources:
            # A trajectory without steps needs no source; one already failed is not asked again.
            live = [i for i in texts if i not in errors and trajs[i].num_steps > 0]
            results = self._run_step_source(fn, [trajs[i] for i in live], [texts[i] for i in live])
            for i, result in zip(live, results, strict=True):
                if isinstance(result, Exception):
                    errors[i] = result
                    continue
                try:
                    step_scores[i].append(checked_probabilities(name, result, trajs[i].num_steps))
                except Exception as e:  # noqa: BLE001 - as above
                    errors[i] = e
        for i, step_texts in texts.items():
            if i in errors:
                continue
            try:
                trajs[i].step_rewards = self._combine_steps(trajs[i], step_scores[i])
                trajs[i].outcome_reward = self._combine_outcomes(trajs[i], step_texts)
            except Exception as e:  # noqa: BLE001 - as above
                errors[i] = e
        for i, err in errors.items():
            traj = trajs[i]
            traj.sample_valid = False
            traj.step_rewards = [0.0] * traj.num_steps
            traj.outcome_reward = 0.0
            traj.info["reward_error"] = f"{type(err).__name__}: {err}"
        done = time.time()
        for traj in trajs:
            traj.info["reward_s"] = (done - t0) / len(trajs)
            traj.info["scored_at"] = done
        return trajs

    def learn(self, trajs: list[Trajectory]) -> dict[str, float]:
        """The online PRM learns from a scored batch (in the batch's order): each step of a valid sample is
        labelled with the sample's outcome reward, as a weighted mean of the outcome sources (in [0, 1])."""
        if self.online is None:
            raise RuntimeError("learn: this reward worker has no online prm source (reward.sources[].online_lr)")
        total = sum(w for _, w, _ in self.outcome_sources)
        items, labels = [], []
        for traj in trajs:
            if not traj.sample_valid or traj.num_steps == 0:
                continue
            if traj.outcome_reward is None:
                raise ValueError(f"online prm: a sample of group {traj.group_id} has no outcome reward (not scored)")
            label = traj.outcome_reward / total
            if not 0.0 <= label <= 1.0:
                raise ValueError(f"online prm: outcome label {label} of group {traj.group_id} is not in [0, 1]")
            step_texts = [_decode(self.tokenizer, traj.response_ids[s:e]) for s, e in traj.step_spans]
            items.append(self._prm_item(traj, step_texts))
            labels.append([label] * traj.num_steps)
        return self.online.learn(items, labels)

    def save_online(self, out_dir: str) -> str:
        if self.online is None:
            raise RuntimeError("save_online: this reward worker has no online prm source")
        return self.online.save(out_dir)

    def load_online(self, in_dir: str) -> None:
        if self.online is None:
            raise RuntimeError("load_online: this reward worker has no online prm source")
        self.online.load(in_dir)

    def ping(self) -> str:
        return "reward"

    # --------------------------------------------------------------------------------------- sources --
    def _run_step_source(
        self, fn: StepSource, trajs: list[Trajectory], texts: list[list[str]]
    ) -> list[list[float] | Exception]:
        """fn's scores for each trajectory, or the exception it raised for that one.

        A batched source scores them all in one call. If that call raises (or miscounts), the error cannot
        be pinned on one trajectory, so each is re-run alone: only the ones that fail again are masked."""
        batch = self.batched_sources.get(fn)
        if batch is not None and len(trajs) > 1:
            try:
                out: list[list[float] | Exception] = list(batch(trajs, texts))
                if len(out) == len(trajs):
                    return out
                log.warning("batched step source gave %d results for %d trajectories; one by one", len(out), len(trajs))
            except Exception as e:  # noqa: BLE001 - attributed per trajectory below
                log.warning("batched step source failed (%s: %s); scoring one by one", type(e).__name__, e)
        results: list[list[float] | Exception] = []
        for traj, step_texts in zip(trajs, texts, strict=True):
            try:
                results.append(fn(traj, step_texts))
            except Exception as e:  # noqa: BLE001 - the caller masks this trajectory with it
                results.append(e)
        return results

    def _combine_steps(self, traj: Trajectory, per_source: list[list[float]]) -> list[float]:
        """Weighted mean of the step sources' checked probabilities (one list per source), transformed."""
        k = traj.num_steps
        if k == 0 or not self.step_sources:
            return [0.0] * k
        total = torch.zeros(k, dtype=torch.float64)
        weight = sum(w for _, w, _ in self.step_sources)
        for (_, w, _), scores in zip(self.step_sources, per_source, strict=True):
            total += w * torch.tensor(scores, dtype=torch.float64)
        probs = (total / weight).float().unsqueeze(0)
        out = apply_reward_transform(self.transform, probs, torch.ones_like(probs), **self.transform_params)
        if not bool(torch.isfinite(out).all()):  # e.g. a transform parameter (log_z) that is itself inf
            raise ValueError(f"reward transform {self.transform!r} gave non-finite step rewards {out.tolist()}")
        return out.squeeze(0).tolist()

    def _combine_outcomes(self, traj: Trajectory, step_texts: list[str]) -> float:
        total = 0.0
        for name, w, fn in self.outcome_sources:
            raw = fn(traj, step_texts)
            value = _number(raw)
            if not math.isfinite(value):  # a non-finite outcome would turn its whole group's advantages NaN
                raise ValueError(f"reward source {name!r}: outcome {raw!r} is not a finite number")
            total += w * value
        return total

    def _oracle_labels(self, traj: Trajectory, step_texts: list[str]) -> dict:
        """Oracle labels per step span (arithmetic tasks only), kept in info for metrics."""
        if self.task_kind != "arithmetic":
            return {}
        from tasks.arithmetic import problem_from_prompt
        from tasks.oracle import STEP_MEANINGS, label_response

        labels = label_response(problem_from_prompt(traj.prompt_text, self.modulus), "".join(step_texts))
        lines = span_lines(step_texts, self.delimiter)
        per_step = {
            m: [bool(getattr(labels, m)[i]) if i < labels.num_steps else False for i in lines] for m in STEP_MEANINGS
        }
        return {**per_step, "outcome_correct": bool(labels.outcome), "format_ok": bool(labels.format_ok)}

    def _oracle_source(self, src: dict) -> StepSource:
        def oracle(traj, step_texts):
            return [float(x) for x in traj.info[self.meaning]]

        return oracle

    def _outcome_source(self, src: dict) -> OutcomeSource:
        if self.task_kind == "arithmetic":
            return lambda traj, step_texts: float(traj.info["outcome_correct"])
        from tasks.datasets import check_answer

        return lambda traj, step_texts: float(check_answer(traj.response_text, traj.answer))

    def _prm_source(self, src: dict) -> StepSource:
        """A learned PRM in the layout src["format"] (tasks/prm_formats.py); batched over trajectories."""
        from tasks.prm_formats import PRM_FORMATS

        fmt = src.get("format") or "token_classification"
        if fmt not in PRM_FORMATS:
            raise ValueError(f"reward source 'prm': unknown format {fmt!r}; valid: {', '.join(PRM_FORMATS)}")
        layout = PRM_FORMATS[fmt]
        # Our layout closes each step with the policy's step delimiter; the public ones bring their own marker.
        options: dict[str, Any] = {"separator": self.delimiter} if layout.uses_step_delimiter else {}
        scorer = layout.load(
            src["path"],
            dtype=role_dtype(self.dtype, self.device),
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            **options,
        )

        lr = float(src.get("online_lr") or 0.0)
        if lr > 0:
            if self.online is not None:
                raise ValueError("reward.sources: at most one prm source may learn online (online_lr > 0)")
            self.online = OnlinePrm(scorer, lr=lr, batch_size=int(src.get("online_batch_size") or 32))

        def prm(traj, step_texts):
            return scorer.score([self._prm_item(traj, step_texts)])[0]

        def prm_batch(trajs, texts):
            return scorer.score([self._prm_item(t, s) for t, s in zip(trajs, texts, strict=True)])

        self.batched_sources[prm] = prm_batch
        return prm

    def _prm_item(self, traj: Trajectory, step_texts: list[str]) -> tuple[str, list[str]]:
        """What a PRM scores: the raw question and the step texts without their delimiter."""
        steps = [t[: -len(self.delimiter)] if t.endswith(self.delimiter) else t for t in step_texts]
        return prm_question(traj), steps


def prm_question(traj: Trajectory) -> str:
    """The question a PRM scores the steps against: the raw question, never the policy's chat template.

    Why raw: the PRM is its own model with its own tokenizer and input convention (tasks/prm_formats.py;
    ours: question text, then each step and the separator, as plain text). The policy's template markup
    (<|im_start|>user ... <|im_start|>assistant) is not part of that convention, may not even be special
    tokens in the PRM's vocabulary, and is absent from the step-labelled data PRMs are trained on
    (StepExample.prompt is the question as written). The steps themselves are the same token spans the
    policy produced. A PRM that wants its own chat format (Qwen2.5-Math-PRM's) builds it from this text
    (tasks.prm_formats.SeparatorHeadPRM, with the PRM tokenizer's template).
    Trajectories made without a question (older callers, tests) fall back to prompt_text, as before."""
    return traj.question or traj.prompt_text


def checked_probabilities(name: str, scores, k: int) -> list[float]:
    """A step source's scores as k floats in [0, 1]; ValueError naming the source, step and value otherwise.

    Step sources return probabilities: NaN, inf or a value outside [0, 1] is a broken source (e.g. a PRM
    with NaN weights), and turning it into a reward would poison every advantage of its group."""
    scores = list(scores)
    if len(scores) != k:
        raise ValueError(f"reward source {name!r} gave {len(scores)} scores for {k} steps")
    out = []
    for i, s in enumerate(scores):
        p = _number(s)
        if not 0.0 <= p <= 1.0:  # NaN (and so any non-number) fails every comparison
            raise ValueError(f"reward source {name!r} step {i}: score {s!r} is not a probability in [0, 1]")
        out.append(p)
    return out


def _number(x) -> float:
    """float(x) for numbers (Python, numpy, 0-d tensors); NaN for anything else, so callers reject it."""
    if isinstance(x, (str, bytes)):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The text of one id list (transformers types decode as str | list[str]: a list only for a batch)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if not isinstance(text, str):
        raise TypeError(f"tokenizer.decode of one id list returned {type(text).__name__}, not str")
    return text


def span_lines(step_texts: list[str], delimiter: str) -> list[int]:
    """Index of the text line (split on the delimiter) each step span starts in.

    Spans and lines agree one to one except where delimiters repeat ("a\\n\\nb"): the segmenter merges an
    extra delimiter into the step before, the line view sees an empty line. Mapping by character offset
    keeps the oracle's labels attached to the span that holds the line's text."""
    out, consumed = [], ""
    for text in step_texts:
        out.append(consumed.count(delimiter))
        consumed += text
    return out
