"""Only the executor layers talk to Ray: every other module of lfvila_data is plain code
that the executor calls (and unit tests call without Ray); in lfvila_model only the Ray Train
wrapper does, so the model trains in one process without Ray installed."""
from __future__ import annotations

import ast
from pathlib import Path

import lfvila_data
import lfvila_model

PACKAGE = Path(lfvila_data.__file__).parent
MODEL = Path(lfvila_model.__file__).parent


def ray_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of ray, at top level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "ray" or n.startswith("ray.")]
    return found


def test_only_the_executor_imports_ray():
    modules = sorted(PACKAGE.rglob("*.py"))
    inside = [m for m in modules if m.relative_to(PACKAGE).parts[0] == "executor"]
    outside = [m for m in modules if m not in inside]
    assert len(outside) > 20 and inside
    hits = [f"{m.relative_to(PACKAGE.parent)}:{line} imports {name}"
            for m in outside for line, name in ray_imports(m.read_text())]
    assert hits == []
    # the check sees what it looks for: the executor's own imports are found
    assert any(ray_imports(m.read_text()) for m in inside)


def test_in_the_model_only_ray_train_imports_ray():
    modules = sorted(MODEL.rglob("*.py"))
    hits = {str(m.relative_to(MODEL)) for m in modules if ray_imports(m.read_text())}
    assert len(modules) > 15 and hits == {"ray_train.py"}


def test_every_form_of_import_is_found():
    source = ("import os, ray.util\n"
              "def f():\n    from ray.exceptions import RayError\n    import ray\n"
              "from ray import remote\n"
              "import rayon\nfrom .ray import x\nfrom rays import y\n")
    assert sorted(ray_imports(source)) == [(1, "ray.util"), (3, "ray.exceptions"), (4, "ray"), (5, "ray")]
