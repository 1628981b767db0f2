"""What each DVC stage really uses, against what dvc.yaml declares for it.

- code: the project modules a stage's module imports, followed transitively (function-level
  imports included) but not through :data:`pipeline.PLUMBING`; each must lie under one of
  the stage's ``deps``, and each declared code dep must hold one of them.
- params: the keys the stage's processes read, recorded by :mod:`pipeline.config.trace`
  (``$GAT_TRACE_PARAMS``) during a real run; each must be declared in ``params`` (a whole
  section declares its keys), except the ``runtime`` and ``tracking`` sections, which by
  design never change a result. Each declared key must have been read.

    python -m tests.declarations            # print what each stage imports (code deps)
"""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

import yaml

from pipeline import PLUMBING

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("gat", "pipeline", "stages")
UNDECLARED_SECTIONS = ("runtime", "tracking")


def module_file(name: str, root: Path = REPO) -> Path | None:
    base = root / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _imports(path: Path, name: str) -> set[str]:
    """Project modules named by import statements anywhere in ``path``."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _executed(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES and module_file(m)}


def _executed(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in ast.walk(child))
            continue
        yield node
        yield from _executed(node)


def closure(module: str, root: Path = REPO) -> set[str]:
    """``module`` and the project modules it reaches, not following plumbing modules.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too: they count.
    """
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        todo += [p for p in parents if module_file(p, root) and p not in seen]
        if name in PLUMBING:
            continue
        todo += sorted(_imports(module_file(name, root), name) - seen)
    return {m for m in seen if m not in PLUMBING and _has_code(module_file(m, root))}


def _has_code(path: Path | None) -> bool:
    """A module of only a docstring (a package's ``__init__``) changes nothing: it need not
    be declared."""
    if path is None:
        return False
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
               for n in body)


def stages(dvc_yaml: Path = REPO / "dvc.yaml", params: dict | None = None) -> dict[str, dict]:
    """Stage name (``train@GAT-T1/4-0``) -> {"cmd", "deps", "params"}, foreach and matrix
    stages expanded as DVC names them."""
    spec = yaml.safe_load(dvc_yaml.read_text())["stages"]
    params = params or yaml.safe_load((dvc_yaml.parent / "params.yaml").read_text())
    def lookup(ref: str):
        section, key = ref.strip("${} ").split(".")
        return params[section][key]

    out = {}
    for name, stage in spec.items():
        if "foreach" in stage:
            for item in lookup(stage["foreach"]):
                body = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
                out[f"{name}@{item}"] = yaml.safe_load(body)
        elif "matrix" in stage:  # DVC names them stage@value1-value2
            axes = {k: lookup(v) if isinstance(v, str) else v
                    for k, v in stage["matrix"].items()}
            template = yaml.safe_dump({k: v for k, v in stage.items() if k != "matrix"})
            for values in itertools.product(*axes.values()):
                body = template
                for key, value in zip(axes, values):
                    body = body.replace(f"${{item.{key}}}", str(value))
                out[f"{name}@{'-'.join(map(str, values))}"] = yaml.safe_load(body)
        else:
            out[name] = stage
    return out


def stage_module(stage: dict) -> str:
    """``python -m stages.train ${item}`` -> ``stages.train``."""
    return stage["cmd"].split()[2]


def covered(file: Path, deps: list[str], root: Path = REPO) -> bool:
    rel = file.relative_to(root)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def undeclared_code(stage: dict, root: Path = REPO) -> list[str]:
    """Modules the stage imports that no dep covers."""
    return sorted(m for m in closure(stage_module(stage), root)
                  if not covered(module_file(m, root), stage.get("deps", []), root))


def unused_code_deps(stage: dict, root: Path = REPO) -> list[str]:
    """Declared deps in the code packages that hold none of the imported modules."""
    files = [module_file(m, root).relative_to(root) for m in closure(stage_module(stage), root)]
    code = [d for d in stage.get("deps", []) if d.split("/")[0] in PACKAGES]
    return sorted(d for d in code if not any(f == Path(d) or Path(d) in f.parents
                                             for f in files))


def declared_keys(stage: dict, all_params: dict) -> set[str]:
    """Dotted keys declared in ``params`` (a section stands for all of its keys)."""
    keys: set[str] = set()
    for entry in stage.get("params", []):
        if isinstance(entry, dict):  # {file: [keys]}: not used in this project
            raise ValueError(f"params entry {entry}: only keys of params.yaml are supported")
        if "." in entry:
            keys.add(entry)
        else:
            keys |= {f"{entry}.{k}" for k in all_params[entry]}
    return keys


def undeclared_keys(stage: dict, reads: set[str], all_params: dict) -> list[str]:
    declared = declared_keys(stage, all_params)
    return sorted(k for k in reads if k not in declared
                  and k.split(".")[0] not in UNDECLARED_SECTIONS)


def unread_keys(stage: dict, reads: set[str], all_params: dict) -> list[str]:
    return sorted(declared_keys(stage, all_params) - reads)


if __name__ == "__main__":
    for name, stage in stages().items():
        files = sorted(str(module_file(m).relative_to(REPO)) for m in
                       closure(stage_module(stage)))
        print(f"{name}:\n  " + "\n  ".join(files))
    sys.exit(0)
