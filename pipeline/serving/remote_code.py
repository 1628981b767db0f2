"""The code an exported GAT pipeline folder carries, so that it loads without this project:
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` with only diffusers
and torch installed.

:func:`write_code` puts in ``generator/``: ``gat_pipeline.py`` (the serving classes of
:mod:`pipeline.serving.diffusers_pipeline`), ``gat_models.py`` (gat/models.py),
``gat_sample.py`` (gat/sample.py), ``gat_tokenizer.py`` and ``gat_common.py`` (the
decoder), each generated from the project's own file at export (statement by statement,
cut to what travels, its project imports made relative: no fork to keep in step), and
``gat_generator.py`` (the generator component's module); then names them in
``model_index.json`` as diffusers names custom code.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import textwrap
from pathlib import Path

from pipeline.serving.diffusers_pipeline import GATGeneratorModel, GATPipeline

CODE = "gat_pipeline"  # generator/gat_pipeline.py: the traveling part of this module
# generator/gat_generator.py: the generator component's module, GATGeneratorModel of CODE.
# A module apart: diffusers runs a module again for each class it takes from it, and the
# pipeline would then check its generator against the class of the run before (and warn).
COMPONENT = "gat_generator"
# The code a folder carries, all in generator/ (diffusers copies a component's module and
# the files that module imports from the component's own folder): (project module, its
# file there, the top-level names that travel; None: the whole module). Imports between
# them become relative; what the kept code does not use is left out.
TRAVELS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("gat.models", "gat_models", None),
    ("gat.sample", "gat_sample", None),
    ("pipeline.pretrained.common", "gat_common", ("to_unit", "to_uint8")),
    ("pipeline.pretrained.tokenizer", "gat_tokenizer", ("Tokenizer",)),
    ("pipeline.serving.diffusers_pipeline", CODE,
     ("FORMAT", "WEIGHTS", "OUTPUT_TYPES", "PROVENANCE", "GATGeneratorModel", "check_folder",
      "GATPipeline", "_convert", "uint8_pixels")),
)
PROJECT = ("gat", "pipeline")  # this project's packages: none exists where a folder goes
# diffusers' reading of a module's imports (utils/dynamic_modules_utils.py check_imports):
# it tries to import each, and warns "pip install NAME" for those it cannot
_DIFFUSERS_IMPORTS = re.compile(r"^\s*(?:import\s+(\S+)\s*$|from\s+(\S+)\s+import)", re.M)


def write_code(folder: str | os.PathLike) -> None:
    """Put the pipeline's code (:func:`code_files`) in a folder that
    :meth:`GATPipeline.save_pretrained` wrote, and name it in model_index.json as diffusers
    names custom code, so that ``DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`` loads the folder where only diffusers and torch are
    installed. The bytes depend on the project's source alone (deterministic exports)."""
    folder = Path(folder)
    for stem, text in code_files().items():
        (folder / "generator" / f"{stem}.py").write_text(text, encoding="utf-8")
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    # ["MODULE", CLASS]: a pipeline class in FOLDER/MODULE.py, a component class in
    # FOLDER/COMPONENT/MODULE.py (pipeline_loading_utils). The pipeline's MODULE is a path
    # into generator/, so the folder's top level stays model_index.json, generator/, vae/.
    index["_class_name"] = [f"generator/{CODE}", GATPipeline.__name__]
    index["generator"] = [COMPONENT, GATGeneratorModel.__name__]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")  # as diffusers


def code_files() -> dict[str, str]:
    """The folder's code, file stem -> source: each module of :data:`TRAVELS` as its
    project file reads, cut to the names that travel, its project imports made relative;
    and :data:`COMPONENT`."""
    stems = {module: stem for module, stem, _ in TRAVELS}
    keeps = {stem: keep for _, stem, keep in TRAVELS}
    files: dict[str, str] = {}
    imported: dict[str, dict[str, list[str]]] = {}  # file -> the files it imports -> names
    for module, stem, keep in TRAVELS:
        files[stem], imported[stem] = _traveling_source(module, keep, stems, keeps)
    # diffusers copies to its module cache only the files that CODE imports itself, not the
    # ones those import in turn (get_cached_module_file): CODE imports every one it needs
    needed, todo = set(), [CODE]
    while todo:
        for dep in imported[todo.pop()]:
            if dep not in needed:
                needed.add(dep)
                todo.append(dep)
    extra = []
    for dep in sorted(needed - set(imported[CODE])):
        names = next(by_file[dep] for by_file in imported.values() if dep in by_file)
        extra.append(f"from .{dep} import {', '.join(names)}")
    if extra:
        lines = files[CODE].splitlines(keepends=True)
        last = max(i for i, line in enumerate(lines) if line.startswith("from ."))
        lines[last + 1:last + 1] = [
            "# diffusers copies only the files this module imports (not theirs): these too\n",
            *(line + "  # noqa: F401\n" for line in extra)]
        files[CODE] = "".join(lines)
    files[COMPONENT] = _header(
        COMPONENT, f"the generator's module for diffusers (model_index.json), "
        f"{GATGeneratorModel.__name__} of {CODE}.py") + \
        f"from .{CODE} import {GATGeneratorModel.__name__}  # noqa: F401\n"
    return files


def _header(stem: str, what: str) -> str:
    """The comment a generated file of the folder starts with."""
    return textwrap.fill(
        f"generator/{stem}.py: {what}, written by its export (pipeline.serving."
        "remote_code.write_code) so that the folder loads without the project: "
        "DiffusionPipeline.from_pretrained(folder, trust_remote_code=True). Generated: edit "
        "the project, not this file.", 90, initial_indent="# ", subsequent_indent="# ",
        break_on_hyphens=False) + "\n\n"


def _bound(node: ast.stmt) -> set[str]:
    """The top-level names a statement binds."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}


def _is_project(node: ast.stmt) -> bool:
    """An absolute import of this project's packages."""
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] in PROJECT
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] in PROJECT
                                                for a in node.names)


def _traveling_source(module: str, keep: tuple[str, ...] | None, stems: dict[str, str],
                      keeps: dict[str, tuple[str, ...] | None]
                      ) -> tuple[str, dict[str, list[str]]]:
    """One file of :func:`code_files` and the folder files it imports (-> the names).

    Statement by statement (each with the comments above it): a module's docstring, its
    ``__future__`` imports, the statements binding a name of ``keep`` (all of them when
    ``keep`` is None) and the imports the kept code uses; an import of a traveling module
    becomes ``from .FILE import ...``. Refused, naming what: kept code that uses a name
    left behind, or a project module that does not travel.
    """
    rel = module.replace(".", "/") + ".py"
    source = Path(importlib.import_module(module).__file__).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    body = ast.parse(source).body
    starts = [0] + [node.end_lineno for node in body[:-1]]  # a node's comments come with it
    has_doc = bool(body) and isinstance(body[0], ast.Expr) \
        and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
    kept: dict[int, str | None] = {}  # node index -> its text (None: as it reads)
    for i, node in enumerate(body):
        if i == 0 and has_doc:
            if keep is None:  # an excerpt's docstring would describe what did not travel
                kept[i] = None
        elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
            kept[i] = None
        elif not isinstance(node, ast.Import | ast.ImportFrom) and (
                keep is None or _bound(node) & set(keep)):
            kept[i] = None
    code = [body[i] for i in kept if not (i == 0 and has_doc)]
    used = {n.id for node in code for n in ast.walk(node) if isinstance(n, ast.Name)}
    missing = set(keep or ()) - set().union(*(_bound(n) for n in code))
    if missing:
        raise ValueError(f"{rel}: {sorted(missing)} (TRAVELS) are not top-level names of it")
    imports: dict[str, list[str]] = {}
    for i, node in enumerate(body):
        if not isinstance(node, ast.Import | ast.ImportFrom) or i in kept:
            continue
        names = [a for a in node.names if (a.asname or a.name.split(".")[0]) in used]
        if not names:
            continue
        if not _is_project(node):
            kept[i] = None
            continue
        target = stems.get(getattr(node, "module", None) or "")
        if target is None or not isinstance(node, ast.ImportFrom):
            raise ValueError(f"{rel}: the code that travels uses `{ast.unparse(node)}`, a "
                             "module that does not (pipeline.serving.remote_code."
                             "TRAVELS)")
        left = [a.name for a in names if keeps[target] is not None and a.name not in keeps[target]]
        if left:
            raise ValueError(f"{rel}: uses {left} of {node.module}, which do not travel "
                             "(pipeline.serving.remote_code.TRAVELS)")
        imports[target] = [a.name if a.asname is None else f"{a.name} as {a.asname}"
                           for a in names]
        kept[i] = f"from .{target} import {', '.join(imports[target])}\n"
    left_behind = used & set().union(*(_bound(n) for i, n in enumerate(body) if i not in kept)) \
        - set().union(*(_bound(body[i]) for i in kept))
    lazy = [ast.unparse(n) for node in code for n in ast.walk(node)
            if n is not node and isinstance(n, ast.Import | ast.ImportFrom) and _is_project(n)]
    if left_behind or lazy:
        raise ValueError(f"{rel}: the code that travels uses {sorted(left_behind) or lazy}, "
                         "which stays (pipeline.serving.remote_code.TRAVELS)")
    header = _header(stems[module], f"{rel if keep is None else ', '.join(keep) + ' of ' + rel}"
                     " of the GAT project, its project imports made relative")
    parts, blank = [], False
    for i, node in enumerate(body):
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        above = lines[starts[i]:first - 1]  # its comments and the blank lines before them
        if i not in kept:  # it goes with its comments; a blank line stays
            blank = blank or any(not line.strip() for line in above)
            continue
        if blank and (not above or above[0].strip()):
            parts.append("\n")
        parts.append("".join(above) + (kept[i] or "".join(lines[first - 1:node.end_lineno])))
        blank = False
    parts.append("".join(lines[body[-1].end_lineno:]) if body else "")
    # what was left out leaves its blank lines behind: two at most between statements
    text = header + re.sub(r"\n{4,}", "\n\n\n", "".join(parts)).strip("\n") + "\n"
    compile(text, rel, "exec")
    # diffusers reads imports line by line, docstrings included: a project one would have it
    # ask for a pip install, a relative one that is no file here would fail the copy
    found = [m[0] or m[1] for m in _DIFFUSERS_IMPORTS.findall(text)]
    wrong = [m for m in found if m.split(".")[0] in PROJECT
             or (m.startswith(".") and m[1:] not in stems.values())]
    if wrong:
        raise ValueError(f"{rel}: diffusers would read {wrong} as imports (a line of a "
                         "docstring?) of what is not in the folder")
    return text, imports
