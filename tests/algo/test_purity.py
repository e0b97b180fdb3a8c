"""algo/ imports only torch / numpy / stdlib: import every module with the runtimes made unimportable."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # not algo.__file__: tests/algo can shadow it as a namespace

BLOCKER = r"""
import importlib.abc, pkgutil, sys
BLOCKED = {"ray", "vllm", "deepspeed", "transformers", "tokenizers"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"algo must not import {name}")
        return None

sys.meta_path.insert(0, Block())
import algo
assert algo.__file__ and algo.__file__.endswith("__init__.py"), algo  # the real package, not tests/algo
for mod in pkgutil.iter_modules(algo.__path__):
    __import__("algo." + mod.name)
ours = {"engine", "tasks", "workers", "learner", "orchestrator"}
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ours | BLOCKED)
assert not leaked, leaked
print("imported", len(list(pkgutil.iter_modules(algo.__path__))), "modules")
"""


def test_algo_imports_without_runtimes():
    # python -c puts the working directory first on sys.path, so the subprocess sees ROOT/algo
    proc = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    n = len(list((ROOT / "algo").glob("*.py"))) - 1  # minus __init__
    assert f"imported {n} modules" in proc.stdout
