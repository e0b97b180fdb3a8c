"""Critic: a value model for the PPO estimators (gae, step_ppo), trained with the clipped value loss.

A Qwen2 backbone with a linear head giving one scalar per position (AutoModelForTokenClassification,
num_labels=1), loaded from a critic dir (or a model_dir that is one), or built from the policy
dir (backbone copied, head zeroed so the first values are 0, not noise). PPO value clipping as in
Schulman et al. 1707.06347 / OpenAI baselines (algo.losses.value_loss). Runs as its own DeepSpeed
world of one rank (own master port).

Position convention (the same as algo.batch.shift_logprobs): values[:, t] is V(s_t), the value of the
prefix input_ids[:, :t], i.e. of the state token t is sampled from; it is read from the head at
position t - 1 (which has seen tokens < t). values[:, 0] = 0 (there is no empty-prefix state here).
So values line up with log-probs, advantages and returns token by token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from algo.batch import valid_token_mask
from algo.losses import agg_units, value_loss
from engine.batching import (
    accumulated_step,
    batch_size,
    check_rows,
    epochs_of_updates,
    forward_logits,
    micro_slices,
    select,
    shift_right,
    to_device,
    trajectory_row,
)
from engine.build import (
    TrainSettings,
    build_engine,
    free_port,
    init_distributed,
    load_checkpoint,
    model_init_context,
    save_checkpoint,
)
from engine.process import prepare_process, ray_restarted, role_device, role_dtype

REQUIRED_KEYS = ("input_ids", "attention_mask", "response_mask", "step_index", "returns", "sample_valid")
METRICS = ("value_loss", "value_clip_frac", "value_mean", "value_error")


def load_value_model(model_dir: str, critic_dir: str | None, trust_remote_code: bool = False):
    """A value model: critic_dir, or model_dir itself when it already is a token classifier (a trained
    critic), else a fresh zero head on model_dir's (policy) backbone."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    src = str(critic_dir or model_dir)
    archs = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code).architectures or []
    is_critic = any(a.endswith("ForTokenClassification") for a in archs)
    if critic_dir is not None and not is_critic:
        raise ValueError(f"critic_dir {src}: expected a token-classification model, found architectures {archs}")
    head = {} if is_critic else {"num_labels": 1}  # an existing critic keeps its own num_labels (checked)
    model = AutoModelForTokenClassification.from_pretrained(
        src, classifier_dropout=0.0, dtype=torch.float32, trust_remote_code=trust_remote_code, **head
    )
    if model.config.num_labels != 1:
        raise ValueError(
            f"critic model {src}: num_labels must be 1 (one value per token), got {model.config.num_labels}"
        )
    if not is_critic:  # a fresh head on a policy backbone: start from V = 0 everywhere
        head_params = [p for p in (model.score.weight, model.score.bias) if p is not None]
        with _gathered_for_update(head_params):
            for p in head_params:
                torch.nn.init.zeros_(p)
    return model


def _gathered_for_update(params: list):
    """Built under ZeRO-3's zero.Init (engine.build.model_init_context) a parameter is an empty partition:
    gather it to change it, and rank 0's change is partitioned back on exit. A plain model: nothing to do."""
    if not any(hasattr(p, "ds_id") for p in params):
        from contextlib import nullcontext

        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


class CriticWorker:
    def __init__(
        self,
        *,
        model_dir: str,
        train: TrainSettings,
        value_clip: float | None,
        loss_agg: str,
        seed: int,
        critic_dir: str | None = None,
        backend: str = "gloo",
        threads: int = 1,
        master_port: int | None = None,
        timeout_s: float = 600.0,
        deterministic: bool = False,
        trust_remote_code: bool = False,
        restore_dir: str | None = None,
        checkpoint_name: str = "critic",
        log_file: str | None = None,
        device: str | None = None,
    ):
        """device: where the model and batches live; None = the GPU Ray gave this actor, else the CPU.
        checkpoint_name: this critic's directory in a checkpoint (one per critic with algo.critics)."""
        prepare_process(threads, log_file=log_file, deterministic=deterministic)
        torch.manual_seed(seed)
        self.device = role_device(device)
        role_dtype("bfloat16" if train.bf16 else "float32", self.device)  # refuse bf16 where it cannot run
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        init_distributed(0, 1, "127.0.0.1", master_port or free_port(), backend, timeout_s=timeout_s)
        with model_init_context(train):  # ZeRO-3: built already partitioned (engine/build.py)
            model = load_value_model(model_dir, critic_dir, trust_remote_code)
        self.engine = build_engine(model, train, self.device)
        self.train_settings, self.value_clip, self.loss_agg = train, value_clip, loss_agg
        self.checkpoint_name = checkpoint_name
        if restore_dir and ray_restarted():
            self._restore_newest(restore_dir)

    def _restore_newest(self, checkpoints: str) -> None:
        """After Ray re-created this actor (its process died), continue from the run's newest critic
        checkpoint rather than from a fresh head; the steps since that checkpoint are lost for the critic."""
        name = self.checkpoint_name
        done = sorted(Path(checkpoints).glob(f"step_*/{name}"))
        if done:
            self.load_checkpoint(str(done[-1]))
            print(f"{name} restarted by Ray: restored {done[-1]}", flush=True)
        else:
            print(f"{name} restarted by Ray: no checkpoint yet, starting from the initial critic", flush=True)

    def _values(self, micro: dict) -> torch.Tensor:
        head = forward_logits(self.engine, micro["input_ids"], micro["attention_mask"])[..., 0].float()
        return shift_right(head) * micro["attention_mask"].float()

    def values(self, batch: dict) -> torch.Tensor:
        """[B, L] float32 V(s_t) per token position (see the module docstring); 0 on padding; on the CPU."""
        check_rows(batch)
        return self._all_values(to_device(batch, self.device)).cpu()

    @torch.no_grad()
    def _all_values(self, batch: dict) -> torch.Tensor:
        """values() of a batch already on self.device, left there."""
        self.engine.eval()
        out = [
            self._values(select(batch, s))
            for s in micro_slices(batch_size(batch), self.train_settings.micro_batch_size)
        ]
        self.engine.train()
        return torch.cat(out)

    def traj_values(self, traj) -> list[float]:
        """V(s_t) for each response token t of one Trajectory (streamed per sample)."""
        batch, response = trajectory_row(traj)
        return self.values(batch)[0, response].tolist()

    def train_step(self, batch: dict) -> dict:
        """Clipped value regression toward batch['returns'] on response tokens of valid samples.

        old_values (the values the advantages were computed with) bound the clipping; without them the
        current values are used, which is the same thing when nothing has changed since.
        """
        check_rows(batch)
        missing = [k for k in REQUIRED_KEYS if k not in batch]
        if missing:
            raise KeyError(f"critic batch is missing {missing} (has {sorted(batch)})")
        batch = to_device(batch, self.device)
        old = batch["old_values"].float() if "old_values" in batch else self._all_values(batch)
        return epochs_of_updates(
            batch,
            epochs=self.train_settings.epochs,
            mini_batches=self.train_settings.mini_batches,
            keys=METRICS,
            update=lambda mini, rows: self._update(mini, old[rows]),
        )

    def _update(self, mini: dict, old: torch.Tensor) -> tuple[dict, float, float]:
        def units_fn(micro):
            mask = valid_token_mask(micro)
            return torch.stack([agg_units(mask, micro["step_index"], self.loss_agg), mask.sum()])

        def loss_fn(micro, rows, weights):
            w_loss, w_tok = weights
            loss, st = value_loss(
                self._values(micro),
                old[rows],
                micro["returns"].float(),
                valid_token_mask(micro),
                micro["step_index"],
                clip=self.value_clip,
                agg=self.loss_agg,
            )
            metrics = {k: w_tok * st[k] for k in METRICS[1:]}
            return w_loss * loss, {"value_loss": w_loss * float(loss.detach()), **metrics}

        return accumulated_step(
            self.engine, mini, micro_batch_size=self.train_settings.micro_batch_size, units_fn=units_fn, loss_fn=loss_fn
        )

    def save_checkpoint(self, ckpt_dir: str, client_state: dict | None = None) -> str:
        """DeepSpeed state (weights, optimizer, scheduler) of the critic."""
        save_checkpoint(self.engine, ckpt_dir, client_state or {}, "rng.json")
        return str(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        return load_checkpoint(self.engine, ckpt_dir, "rng.json", "critic")
