"""The floors hold: gat/ imports only torch, numpy, PIL and the standard library; pipeline/
never imports a stage; a stage never imports another stage."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY_ALLOWED = {"torch", "numpy", "PIL", "gat", "__future__"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module)
    return names


def library_violations(root: Path = REPO) -> list[str]:
    """``file: module`` for every import in gat/ outside torch, numpy, PIL, stdlib."""
    found = []
    for path in sorted((root / "gat").rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top not in LIBRARY_ALLOWED and top not in sys.stdlib_module_names:
                found.append(f"{path.relative_to(root)}: {name}")
    return found


def stage_violations(root: Path = REPO) -> list[str]:
    """``file: module`` for every import of ``stages`` outside the stage itself."""
    found = []
    for folder in ("stages", "pipeline", "gat"):
        for path in sorted((root / folder).rglob("*.py")):
            found += [f"{path.relative_to(root)}: {name}" for name in _imports(path)
                      if name == "stages" or name.startswith("stages.")]
    return found


def test_the_model_library_needs_only_torch_numpy_pil():
    assert library_violations() == []


def test_no_stage_imports_another_and_nothing_imports_a_stage():
    assert stage_violations() == []


@pytest.mark.parametrize("check, line, expected", [
    (library_violations, "import diffusers\n", "gat/bad.py: diffusers"),
    (library_violations, "from mlflow.tracking import MlflowClient\n", "mlflow.tracking"),
    (stage_violations, "from stages.encode import SHARDS\n", "stages/bad.py: stages.encode"),
])
def test_the_checks_catch_a_violation(tmp_path, check, line, expected):
    for folder in ("gat", "stages", "pipeline"):
        (tmp_path / folder).mkdir()
    target = "gat" if check is library_violations else "stages"
    (tmp_path / target / "bad.py").write_text(f"def f():\n    {line}")  # lazy imports count
    assert any(expected in v for v in check(tmp_path))
