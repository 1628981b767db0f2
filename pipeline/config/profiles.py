"""Presets for ``params.yaml``: ``profiles/NAME.yaml``, written out by ``gat profile NAME``.

``params.yaml`` is the one file every stage reads and the one a user edits. The presets in
``profiles/`` are what it is written from: ``embedded`` (the default: Fashion-MNIST ladder
on a CPU), ``paper`` (the paper's ImageNet 256 study on a GPU cluster), ``tiny`` (the CI
end-to-end test). Writing one validates it first (a bad preset never replaces anything),
then copies it atomically under a header that says where it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config.coerce import ParamsError
from pipeline.config.schema import DEFAULT_PARAMS, Params, load_params
from pipeline.files import atomic_path
from pipeline.layout import REPO_ROOT

PROFILES_DIR = REPO_ROOT / "profiles"
HEADER = ("# params.yaml: the study every stage reads. Edit this file (not the preset): DVC\n"
          "# reruns what your edit changes. Written by `gat profile {name}` from "
          "profiles/{name}.yaml.\n")


# Presets whose outputs are too large to copy into DVC's cache and back (the paper's shards
# and teacher tokens: 46-556 GB): `gat profile NAME` sets the workspace's cache to links.
LINKED_DVC_CACHE = ("paper",)
LINK_TYPES = "reflink,hardlink,symlink"

def available() -> dict[str, Path]:
    """Profile name -> file, for every ``profiles/*.yaml``."""
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"))}


def resolve(name: str) -> Path:
    """A profile name (``paper``) or the path of a params file -> that file.

    Raises :class:`ParamsError` naming the known profiles when neither exists.
    """
    profiles = available()
    if name in profiles:
        return profiles[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise ParamsError(
        f"profile {name!r}: no such profile. Allowed: {', '.join(profiles) or '(none)'}, "
        "or the path of a params .yaml file"
    )


def render(name: str) -> str:
    """The text ``gat profile NAME`` writes: the header, then the preset as it is."""
    return HEADER.format(name=name) + resolve(name).read_text()


def selected(params_file: Path = DEFAULT_PARAMS) -> str | None:
    """The preset ``params_file`` was written from and still equals, if any."""
    if not params_file.is_file():
        return None
    current = params_file.read_text()
    return next((name for name in available() if render(name) == current), None)


def derived(params: Params) -> dict[str, Any]:
    """What the config implies, for the dry run: per size, its shape and what training
    derives (the same block as ``python -m stages.train SIZE --dry-run``)."""
    from gat.models import model_config
    from pipeline.fidelity import describe
    from pipeline.training.job import derived as train_derived

    sizes = {}
    for name in params.study.sizes:
        cfg = model_config(name)
        sizes[name] = {"depth": cfg.depth, "width": cfg.width, "heads": cfg.heads,
                       **train_derived(params, name)}
    return {"sizes": sizes, "metric": describe(params.evaluator.source),
            "reference": params.evaluator.reference or "computed from data.eval_path",
            "hub_revisions": hub_revisions(params)}


def hub_revisions(params: Params) -> dict[str, str]:
    """Each hub part's source and revision; an unpinned one (empty revision) says so: its
    weights are whatever the hub's default branch holds when a stage downloads them."""
    return {part: (f"{cfg.source}@{cfg.revision}" if cfg.revision else
                   f"{cfg.source} (NOT PINNED: the hub's default branch at download time)")
            for part, cfg in (("tokenizer", params.tokenizer), ("teacher", params.teacher))
            if cfg.source != "train" and not Path(cfg.source).exists()}


def select(name: str, params_file: Path = DEFAULT_PARAMS, check_paths: bool = True) -> Path:
    """Validate preset ``name`` and write it onto ``params_file`` atomically; its path."""
    source = resolve(name)
    load_params(source, check_paths=check_paths)
    with atomic_path(params_file) as tmp:
        tmp.write_text(render(name) if name in available() else source.read_text())
    return source
