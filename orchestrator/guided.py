"""Guided off-policy samples (LUFFY, Yan et al. 2504.14945): a group whose samples all failed gets the task's gold
solution as one of its samples, so that a group-relative estimator learns something from its prompt.

With algo.guided.enable, once a step's batch is scored (and, with rollout.dynamic_sampling, filled:
orchestrator/dynamic.py), every group with at least one valid sample and no valid sample above outcome 0
(algo.guided.failed_groups) gets one gold sample. Its advantage is computed like any other sample's of its group;
the learner weights its loss by min(pi_theta / mu, algo.guided.max_weight) outside the clip (algo/guided.py).

Decisions, and what they cost:
- The gold sample TAKES THE PLACE of the group's last sample (the highest sample index: a failure, or a masked
  sample) instead of being one extra sample (as the feature was first asked for; LUFFY adds its traces to the
  group): the learner's mini-batch split relies on exactly
  prompts_per_step x group_size samples (orchestrator/validate.py). One failure of the group is lost from the
  batch: the group's baseline is computed over group_size - 1 failures and the gold.
- The gold is a real Trajectory (GoldWriter): the policy's own prompt ids (those of the sample it replaces), the
  solution's tokens and EOS, cut into steps by the very code that cuts the generator's samples
  (algo.segment.split_steps over workers.vllm_setup.token_bytes_table), info["guided"] = True. It is scored by
  the roles that score every sample, through orchestrator.rollout.stream_rollouts itself (score_written): its
  step rewards and outcome come from the reward sources, its critic values and reference log-probs from the
  critics and the reference, so every column of the Rollout stays aligned. The online PRM does not learn from
  it (it learned from the batch the policy sampled, before the replacement).
- Its behaviour log-probs are zeros, not log-probs: nobody sampled the text. Only algo.off_policy=recompute takes
  the ratio against the learner's own old log-probs, the config refuses the rest (and a KL in the reward), and
  the statistics of behaviour log-probs leave guided rows out (kl/behavior_ref, logprob_diff, offpolicy/*).
- Rollout statistics describe the policy: reward/*, oracle/*, response/* are over the policy's own samples
  (orchestrator.metrics.rollout_stats); guided/outcome_mean is the gold samples' mean outcome (1 unless a reward
  source disagrees with the gold). The sample budget (`samples`) counts generated samples: the failure the gold
  replaced was generated and stays counted, the gold is not (samples_step stays the batch size).
Metrics: guided/groups (groups that got a gold sample), guided/outcome_mean, timing/guided_s; the learner adds
guided/weight_mean, _std, _max over the gold tokens (learner/rank.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from algo.guided import failed_groups
from algo.segment import split_steps
from algo.trajectory import PromptRequest, Trajectory
from orchestrator.rollout import Rollout, stream_rollouts
from orchestrator.step import StepSettings
from workers.vllm_setup import token_bytes_table


class GoldWriter:
    """Writes a gold solution as a Trajectory of the policy's: tokenized with the policy's tokenizer (apart from
    the prompt, as the generator keeps a response apart from its prompt), EOS appended as a finished sample has
    it, step spans from the token ids (algo.segment.split_steps, the generator's own cut)."""

    def __init__(self, tokenizer_dir: str, step_delimiter: str, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"{tokenizer_dir}: the tokenizer has no eos token to end a gold solution with")
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.step_delimiter = step_delimiter
        self.token_bytes = token_bytes_table(self.tokenizer, len(self.tokenizer))  # built once

    def trajectory(self, replaced: Trajectory, solution: str) -> Trajectory:
        """The gold sample that takes the place of `replaced` (same prompt, group, sample index and version)."""
        if not solution:
            raise ValueError(f"prompt {replaced.prompt_id!r}: no gold solution for a guided sample")
        response = [int(i) for i in self.tokenizer.encode(solution, add_special_tokens=False)] + [self.eos_id]
        sample = replaced.info["sample"]
        return Trajectory(
            uid=f"v{replaced.policy_version}-gold-g{replaced.group_id}-{replaced.prompt_id}-{sample}",
            prompt_id=replaced.prompt_id,
            group_id=replaced.group_id,
            policy_version=replaced.policy_version,  # mu of the gold: the policy that made the batch
            prompt_ids=list(replaced.prompt_ids),
            response_ids=response,
            behavior_logprobs=[0.0] * len(response),  # none exist (see the module docstring); never read
            finish_reason="stop",
            step_spans=split_steps(response, self.token_bytes, self.step_delimiter),
            prompt_text=replaced.prompt_text,
            response_text=str(self.tokenizer.decode(response, skip_special_tokens=True)),  # as the generator decodes
            answer=replaced.answer,
            question=replaced.question,
            info={"sample": sample, "guided": True},
        )


def guide_rollout(
    rollout: Rollout,
    requests: list[PromptRequest],
    write: Callable[[Trajectory, str], Trajectory],
    score: Callable[[list[Trajectory]], Rollout],
) -> Rollout:
    """`rollout` with the last sample of every group that all failed replaced by its prompt's gold sample.

    requests: every request the batch was drawn from, with the group ids the rollout has (their `solution`);
    write(replaced, solution) -> the gold trajectory (GoldWriter.trajectory); score(trajectories) -> their
    scored Rollout, in (group_id, sample) order (score_written). The guided/* metrics go into Rollout.timing,
    which train_step adds to the step's metrics.
    """
    trajs = rollout.trajectories
    rows: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        rows.setdefault(t.group_id, []).append(i)
    outcomes = {g: [_outcome(trajs[i]) for i in idx if trajs[i].sample_valid] for g, idx in rows.items()}
    failed = sorted(failed_groups(outcomes))  # (group_id) order: the order score() returns the golds in
    timing = {**rollout.timing, "guided/groups": float(len(failed))}
    if not failed:
        return Rollout(trajs, rollout.values, rollout.ref_logprobs, timing, rollout.critic_values)
    solutions = {r.group_id: r.solution for r in requests}
    missing = [g for g in failed if g not in solutions]
    if missing:
        raise ValueError(f"guide_rollout: no request for groups {missing[:5]}")
    last = [max(rows[g], key=lambda i: trajs[i].info["sample"]) for g in failed]
    t0 = time.time()
    gold = score([write(trajs[i], solutions[trajs[i].group_id]) for i in last])
    keys = [(t.group_id, t.info["sample"]) for t in gold.trajectories]
    if keys != [(trajs[i].group_id, trajs[i].info["sample"]) for i in last]:
        raise ValueError(f"guide_rollout: scored gold samples {keys[:5]} do not match the replaced samples")
    valid = [_outcome(t) for t in gold.trajectories if t.sample_valid]
    if valid:
        timing["guided/outcome_mean"] = sum(valid) / len(valid)
    timing["timing/guided_s"] = time.time() - t0
    return Rollout(
        _put(trajs, last, gold.trajectories),
        _put_column(rollout.values, last, gold.values, "critic values"),
        _put_column(rollout.ref_logprobs, last, gold.ref_logprobs, "reference log-probs"),
        timing,
        {
            reward: _put(values, last, _present(gold.critic_values.get(reward), f"critic-{reward} values"))
            for reward, values in rollout.critic_values.items()
        },
    )


def score_written(roles, s: StepSettings, trajectories: list[Trajectory]) -> Rollout:
    """Score trajectories that were written, not sampled, by the roles that score every sample (reward replicas
    in turn, critics, reference), through stream_rollouts itself."""
    return stream_rollouts(
        _Written(trajectories),
        roles.rewards,
        [],  # nothing to sample
        {},
        reward_batch=s.reward_batch,
        critic=roles.critic,
        critics=roles.critics,
        reference=roles.reference,
        timeout_s=s.timeout_s,
    )


class _Written:
    """The trajectory source stream_rollouts reads (orchestrator.rollout.TrajectorySource), handing out
    trajectories already written instead of sampling. Each goes to the scorers by value (there is no ObjectRef):
    Ray copies it into the call as it would resolve a generator's ObjectRef."""

    def __init__(self, trajectories: list[Trajectory]):
        self.trajectories = trajectories

    def stream(self, requests: list[PromptRequest], sampling: dict) -> Iterator[tuple[object, Trajectory]]:
        for t in self.trajectories:
            yield t, t


def _outcome(t: Trajectory) -> float:
    return 0.0 if t.outcome_reward is None else float(t.outcome_reward)  # as algo.batch.collate reads it


def _put(column: list, rows: list[int], new: list) -> list:
    """A copy of `column` with column[rows[k]] = new[k]."""
    out = list(column)
    for i, item in zip(rows, new, strict=True):
        out[i] = item
    return out


def _put_column(column: list | None, rows: list[int], new: list | None, what: str) -> list | None:
    """_put for a column the roles may not give (None): the batch and its gold samples have it, or neither."""
    if column is None and new is None:
        return None
    return _put(_present(column, what), rows, _present(new, what))


def _present(column: list | None, what: str) -> list:
    if column is None:  # the same roles score both: a missing column is a bug
        raise ValueError(f"guide_rollout: the batch and its gold samples disagree on having {what}")
    return column
