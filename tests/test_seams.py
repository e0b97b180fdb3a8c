"""The package dependency rules of the README's "Developing" section, read from every module's imports.

Dependencies point one way, so each package can be read (and tested) without the ones above it: a worker
never imports the learner, the shared training code (engine/) never imports a role, algo/ and tasks/ import
none of ours but themselves (and engine/ only algo/).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("algo", "tasks", "engine", "workers", "learner", "orchestrator")
ALLOWED = {
    "algo": {"algo"},
    "tasks": {"tasks"},
    "engine": {"engine", "algo"},
    "workers": {"workers", "engine", "algo", "tasks"},
    "learner": {"learner", "engine", "algo"},
    "orchestrator": set(OURS),
}


def imported_packages(path: Path) -> set[str]:
    """Our top-level packages that a module imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in OURS}
    return found


def test_every_import_follows_the_package_rules():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).glob("*.py")):
            for dep in sorted(imported_packages(path) - allowed):
                wrong.append(f"{path.relative_to(ROOT)} imports {dep}")
    assert not wrong, wrong


def test_the_rules_cover_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(ALLOWED), packages
