"""Atomic outputs: every file or folder a stage writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``.

    Works for a file or a directory: write to the yielded path, and a crash leaves only a
    ``.tmp-*`` sibling behind (removed here on exceptions), never a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes, read in 1 MiB blocks (shards, checkpoint files)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(paths: list[str | os.PathLike], base: str | os.PathLike | None = None,
           extra: Any = None) -> str:
    """sha256 over every file under ``paths`` (files or folders, recursively, sorted), each
    named relative to ``base`` (default: its own folder), plus ``extra`` as sorted JSON.

    The one content hash of the pipeline: tokenizer and teacher fingerprints, the training
    code in a run key. Missing paths count as empty.
    """
    sha = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for top in map(Path, paths):
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else (
            [top] if top.is_file() else [])
        for file in files:
            if "__pycache__" in file.parts:
                continue
            name = file.relative_to(base) if base else file.relative_to(top.parent)
            sha.update(str(name).encode() + b"\0" + file.read_bytes())
    return sha.hexdigest()
