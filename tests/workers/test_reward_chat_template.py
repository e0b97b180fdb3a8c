"""With task.chat_template=model the policy is prompted with templated text, but the PRM scores the steps
against the question as written (workers/reward.py prm_question says why); requests carry both to it."""

from pathlib import Path

from algo.trajectory import PromptRequest, Trajectory
from orchestrator.generators import _subset
from workers.reward import RewardWorker, prm_question

BASE_POLICY = str(Path(__file__).resolve().parents[2] / "tasks" / "assets" / "base_policy")
QUESTION = "What is 8*9?"
TEMPLATED = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def _traj(tok, question: str = QUESTION) -> Trajectory:
    steps = ["8*9 = 72\n", "The answer is 72\n"]
    ids, spans = [], []
    for s in steps:
        piece = tok.encode(s)
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    return Trajectory(
        uid="u",
        prompt_id="p",
        group_id=0,
        policy_version=0,
        prompt_ids=tok.encode(TEMPLATED),
        response_ids=ids,
        behavior_logprobs=[-1.0] * len(ids),
        finish_reason="stop",
        step_spans=spans,
        prompt_text=TEMPLATED,
        response_text="".join(steps),
        answer="72",
        question=question,
    )


def test_prm_scores_against_the_raw_question(tmp_path, monkeypatch):
    import tasks.prm_formats
    from tasks.models import make_tiny_prm
    from tasks.tokenizer import load_tokenizer

    tok = load_tokenizer(BASE_POLICY)
    prm_dir = tmp_path / "prm"
    make_tiny_prm(prm_dir, policy_dir=BASE_POLICY)
    seen = []
    real = tasks.prm_formats.TokenClassificationPRM.score

    def spy(self, items):
        seen.extend(items)
        return real(self, items)

    monkeypatch.setattr(tasks.prm_formats.TokenClassificationPRM, "score", spy)
    worker = RewardWorker(
        tokenizer_dir=BASE_POLICY,
        sources=[{"name": "prm", "path": str(prm_dir)}],
        meaning="step_correct",
        transform="identity",
        transform_params={},
        task_kind="jsonl",
    )
    t = worker.score(_traj(tok))
    assert t.sample_valid, t.info.get("reward_error")
    assert seen == [(QUESTION, ["8*9 = 72", "The answer is 72"])]
    assert len(t.step_rewards) == 2


def test_question_falls_back_to_the_prompt_and_survives_a_reissue():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE_POLICY)
    assert prm_question(_traj(tok)) == QUESTION
    assert prm_question(_traj(tok, question="")) == TEMPLATED  # trajectories made without one: as before
    req = PromptRequest("p", 3, TEMPLATED, "72", question=QUESTION)
    again = _subset(req, [1, 2])  # a dead replica's samples re-issued elsewhere keep the question
    assert (again.text, again.question, again.answer, again.samples) == (TEMPLATED, QUESTION, "72", (1, 2))
