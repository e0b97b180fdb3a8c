"""Checkpoints: written to a temp directory, flushed to disk, then renamed, so a crash (of the process or
of the machine) never leaves half a checkpoint: the previous one stays the newest complete one.

A checkpoint holds the learner (DeepSpeed model, optimizer, scheduler, RNG per rank), the critic (the
same, one rank) when there is one (with algo.critics each critic in its own directory, critic-<reward>), an
online PRM (weights and optimizer) when there is one, and the driver state: step, policy version, data
position, samples consumed, RNG. RNG states are JSON, never pickles:
loading a run's files runs no code.
"""

from __future__ import annotations

import json
import os
import shutil

from engine.process import load_rng, save_rng
from orchestrator.runtime import ray_get
from workers.sources import ONLINE_PRM_DIR

PREFIX = "step_"


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), "checkpoints")


def critic_checkpoint_name(reward: str | None = None) -> str:
    """A critic's directory in a checkpoint (and its log name): "critic" for the one critic of the combined
    reward, "critic-<reward>" for the critic of one reward (algo.critics)."""
    return "critic" if reward is None else f"critic-{reward}"


def latest_checkpoint(run_dir: str) -> str | None:
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return None
    done = sorted(
        d for d in os.listdir(root) if d.startswith(PREFIX) and os.path.isfile(os.path.join(root, d, "state.json"))
    )
    return os.path.join(root, done[-1]) if done else None


def save_checkpoint(run_dir: str, roles, state: dict, keep: int, timeout_s: float) -> str:
    root = checkpoint_root(run_dir)
    final = os.path.join(root, f"{PREFIX}{state['step']:06d}")
    tmp = os.path.join(root, f".tmp-{PREFIX}{state['step']:06d}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    roles.learner.save_checkpoint(os.path.join(tmp, "learner"), {"step": state["step"]})
    for name, actor, (save, _) in _stateful_actors(roles):
        ray_get(getattr(actor, save).remote(os.path.join(tmp, name)), name, save, timeout_s)
    save_rng(os.path.join(tmp, "driver_rng.json"))
    with open(os.path.join(tmp, "state.json"), "w") as fh:  # written last: its presence marks completeness
        json.dump(state, fh, indent=1)
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_path(root)  # the rename itself reaches the disk
    for old in sorted(d for d in os.listdir(root) if d.startswith(PREFIX))[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def _stateful_actors(roles) -> list[tuple[str, object, tuple[str, str]]]:
    """(directory in the checkpoint, actor, its (save, load) methods) of every actor besides the learner whose
    state a checkpoint holds: the single critic, one critic per reward (algo.critics), an online PRM."""
    out: list[tuple[str, object, tuple[str, str]]] = []
    checkpoint_methods = ("save_checkpoint", "load_checkpoint")
    if roles.critic is not None:
        out.append(("critic", roles.critic, checkpoint_methods))
    out += [(critic_checkpoint_name(reward), critic, checkpoint_methods) for reward, critic in roles.critics.items()]
    if roles.online_prm is not None:
        out.append((ONLINE_PRM_DIR, roles.online_prm, ("save_online", "load_online")))
    return out


def fsync_tree(path: str) -> None:
    """Flush every file and directory under path to disk (the writers, DeepSpeed included, only close)."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            _fsync_path(os.path.join(dirpath, name))
        _fsync_path(dirpath)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str, roles, timeout_s: float) -> dict:
    roles.learner.load_checkpoint(os.path.join(path, "learner"))
    for name, actor, (_, load) in _stateful_actors(roles):
        ray_get(getattr(actor, load).remote(os.path.join(path, name)), name, load, timeout_s)
    load_rng(os.path.join(path, "driver_rng.json"))
    with open(os.path.join(path, "state.json")) as fh:
        return json.load(fh)
