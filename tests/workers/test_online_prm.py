"""The online PRM (workers/online_prm.py): a PRM fine-tuned during RL on each scored batch, every step labelled
with its sample's outcome. Tiny PRMs built here from the committed base policy; nothing is downloaded."""

import math

import pytest
import torch

from tasks.models import make_tiny_prm, make_tiny_separator_prm, make_tiny_step_tag_prm
from tasks.prm_formats import PRM_FORMATS, PRMFormat
from tests.workers.test_reward_worker import BASE_POLICY, GOLD, PROMPT, WRONG, make_traj, make_worker
from workers.online_prm import OnlinePrm

GOLD_ITEM = (PROMPT.strip(), [line.strip() for line in GOLD])
WRONG_ITEM = (PROMPT.strip(), [line.strip() for line in WRONG])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("online_prms")
    make_tiny_prm(root / "tc", policy_dir=BASE_POLICY)  # zero head: 0.5 at every step
    make_tiny_step_tag_prm(root / "st", BASE_POLICY)
    make_tiny_separator_prm(root / "sh", BASE_POLICY)
    return {"token_classification": str(root / "tc"), "step_tag": str(root / "st"), "separator_head": str(root / "sh")}


def load(fmt: str, path: str) -> PRMFormat:
    return PRM_FORMATS[fmt].load(path, dtype=torch.float32, device="cpu", trust_remote_code=False)


def test_fit_loss_by_hand(dirs):
    # The zero head scores p = 0.5 at all 3 steps: BCE = -log(0.5) = ln 2 = 0.693147 whatever the label,
    # and the mean over the 3 steps is ln 2 too. The step then moves every score toward its label.
    online = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=1)
    assert online.scorer.score([GOLD_ITEM]) == [[0.5, 0.5, 0.5]]
    loss, probs = online.fit([GOLD_ITEM], [[1.0, 0.0, 1.0]])
    assert loss == pytest.approx(math.log(2), abs=1e-6) and probs == [[0.5, 0.5, 0.5]]  # both from before the step
    after = online.scorer.score([GOLD_ITEM])[0]
    assert after[0] > 0.5 and after[2] > 0.5 and after[1] < 0.5


def test_fit_counts_labels_against_steps(dirs):
    online = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=1)
    with pytest.raises(ValueError, match="online PRM: 2 labels for 3 steps"):
        online.fit([GOLD_ITEM], [[1.0, 0.0]])


@pytest.mark.parametrize("fmt", list(PRM_FORMATS))
def test_every_layout_fits_outcome_labels(dirs, fmt):
    # Outcome labels: every step of the right solution 1, of the wrong one 0 (their first steps are the same
    # text, so the best fit there is 0.5). Whatever the layout, ten updates lower the loss by a tenth.
    online = OnlinePrm(load(fmt, dirs[fmt]), lr=1e-3, batch_size=2)
    items, labels = [GOLD_ITEM, WRONG_ITEM], [[1.0] * 3, [0.0] * 3]
    first = online.learn(items, labels)
    for _ in range(9):
        last = online.learn(items, labels)
    assert last["prm_online/loss"] < 0.9 * first["prm_online/loss"]
    assert last["prm_online/updates"] == 10 and last["prm_online/samples"] == 2 and last["prm_online/label_mean"] == 0.5
    assert first["prm_online/auc"] in (0.0, 0.5, 1.0)  # one right and one wrong sample: AUC 1, 0 or a tie


def test_auc_and_spread_of_the_scores_before_learning(dirs):
    # The zero head scores 0.5 everywhere: every final-step score ties, so AUC = 1/2 and the spread is 0.
    # After learning, the right sample's final score is above the wrong one's: AUC = 1.
    online = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=2)
    items, labels = [GOLD_ITEM, WRONG_ITEM], [[1.0] * 3, [0.0] * 3]
    first = online.learn(items, labels)
    assert first["prm_online/auc"] == 0.5 and first["prm_online/score_std"] == 0.0
    for _ in range(5):
        last = online.learn(items, labels)
    assert last["prm_online/auc"] == 1.0 and last["prm_online/score_std"] > 0.0


def test_learning_separates_the_steps_that_differ(dirs):
    online = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=2)
    for _ in range(10):
        online.learn([GOLD_ITEM, WRONG_ITEM], [[1.0] * 3, [0.0] * 3])
    right, wrong = online.scorer.score([GOLD_ITEM, WRONG_ITEM])
    assert right[0] == wrong[0]  # the same text, the same score
    assert min(right[1:]) > 0.6 and max(wrong[1:]) < 0.4


def test_one_update_per_mini_batch_loss_taken_before_each(dirs):
    # batch_size 1 over 2 items: 2 updates; the first mini-batch's loss is ln 2 (zero head), so the mean is
    # (ln 2 + loss of the second before its own step) / 2, and that second loss is not ln 2 any more.
    online = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=1)
    out = online.learn([GOLD_ITEM, WRONG_ITEM], [[1.0] * 3, [0.0] * 3])
    assert out["prm_online/updates"] == 2
    second = 2 * out["prm_online/loss"] - math.log(2)
    assert second > math.log(2) + 1e-4  # the first step raised the shared scores; the wrong item's loss grew


def test_save_then_load_continues_exactly(dirs, tmp_path):
    a = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=2)
    items, labels = [GOLD_ITEM, WRONG_ITEM], [[1.0] * 3, [0.0] * 3]
    a.learn(items, labels)
    a.save(str(tmp_path / "ckpt"))
    b = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=2)
    b.load(str(tmp_path / "ckpt"))
    assert b.updates == 1 and b.scorer.score(items) == a.scorer.score(items)
    a.learn(items, labels), b.learn(items, labels)  # Adam's moments came back too: the next step is identical
    assert b.scorer.score(items) == a.scorer.score(items)
    fresh = load("token_classification", str(tmp_path / "ckpt"))  # and the directory is a PRM any source loads
    assert fresh.score([GOLD_ITEM]) != [[0.5, 0.5, 0.5]]


def test_load_rejects_another_model(dirs, tmp_path):
    a = OnlinePrm(load("token_classification", dirs["token_classification"]), lr=1e-3, batch_size=2)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights"):
        a.load(str(tmp_path))
    other = OnlinePrm(load("separator_head", dirs["separator_head"]), lr=1e-3, batch_size=2)
    other.save(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="does not match the model"):
        a.load(str(tmp_path / "other"))


def test_worker_learns_from_outcomes_of_valid_samples(dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE_POLICY)
    w = make_worker([{"name": "prm", "path": dirs["token_classification"], "online_lr": 1e-3}, {"name": "outcome"}])
    right, wrong, broken = (make_traj(tok, lines) for lines in (GOLD, WRONG, GOLD))
    w.score_batch([right, wrong, broken])
    broken.sample_valid = False  # a masked sample teaches nothing
    seen = []
    w.online.learn = lambda items, labels: seen.append((items, labels)) or {}
    w.learn([right, wrong, broken])
    ((items, labels),) = seen
    # the PRM's question is the raw prompt (workers/reward.prm_question); steps lose their delimiter
    assert items == [(PROMPT, GOLD_ITEM[1]), (PROMPT, WRONG_ITEM[1])] and labels == [[1.0] * 3, [0.0] * 3]


def test_worker_online_needs_an_outcome_and_one_online_source(dirs):
    tc = dirs["token_classification"]
    with pytest.raises(ValueError, match="needs an outcome source"):
        make_worker([{"name": "prm", "path": tc, "online_lr": 1e-3}])
    with pytest.raises(ValueError, match="at most one prm source may learn online"):
        make_worker([{"name": "prm", "path": tc, "online_lr": 1e-3}] * 2 + [{"name": "outcome"}])
    frozen = make_worker([{"name": "prm", "path": tc}, {"name": "outcome"}])
    with pytest.raises(RuntimeError, match="no online prm source"):
        frozen.learn([])
