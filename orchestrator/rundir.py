"""The run directory every command writes: resolved config.yaml, summary.json, written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile

from omegaconf import DictConfig, OmegaConf


def open_run_dir(cfg: DictConfig) -> str:
    """Create run_dir and write the resolved config into it; returns the path."""
    os.makedirs(cfg.run_dir, exist_ok=True)
    atomic_write_text(os.path.join(cfg.run_dir, "config.yaml"), OmegaConf.to_yaml(cfg, resolve=True))
    return cfg.run_dir


def logs_dir(run_dir: str) -> str:
    """Where every actor writes its output (vLLM, DeepSpeed, transformers): run_dir/logs."""
    return os.path.join(os.path.abspath(run_dir), "logs")


def write_summary(run_dir: str, summary: dict) -> str:
    path = os.path.join(run_dir, "summary.json")
    atomic_write_text(path, json.dumps(jsonable(summary), indent=2, sort_keys=True) + "\n")
    return path


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temp file in the same directory, then rename: readers never see half a file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def jsonable(x):
    """Plain JSON values; non-finite floats become None so the file stays strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def kept_notes(path: str, heading: str) -> str:
    """The hand-written part of an earlier report at path (from `heading` on), so that remaking its tables
    keeps it; empty when there is no such file or heading."""
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return "\n" + text[text.index(heading) :] if heading in text else ""
