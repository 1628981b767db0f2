"""Which params keys a stage really reads: the evidence behind dvc.yaml's ``params:``.

With ``$GAT_TRACE_PARAMS`` set to a folder, every read of a params key (``params.train.
batch``) after validation appends ``{"stage": $DVC_STAGE, "key": "train.batch"}`` to a
file of that folder, one file per process: Ray workers inherit the variable, so keys read
inside training workers and Tune trials count for the stage that started them.
``tests/stages/test_dvc_declarations.py`` compares these reads with dvc.yaml. Unset (the
default), a read costs one global lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

TRACE_ENV = "GAT_TRACE_PARAMS"
STAGE_ENV = "DVC_STAGE"  # set by DVC for each stage command ("train@GAT-T1/4")

_trace_dir = os.environ.get(TRACE_ENV) or None
_local = threading.local()
_seen: set[tuple[str, str]] = set()


class Traced:
    """Mixin for a params section: reads of its fields are recorded when tracing is on."""

    SECTION: ClassVar[str] = ""

    def __getattribute__(self, name: str):
        if _trace_dir and name[0] != "_" and name in type(self).__dataclass_fields__:
            _record(f"{type(self).SECTION}.{name}")
        return object.__getattribute__(self, name)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Reads inside this block are not a stage's use of params (validation, copying)."""
    _local.paused = getattr(_local, "paused", 0) + 1
    try:
        yield
    finally:
        _local.paused -= 1


def _record(key: str) -> None:
    if getattr(_local, "paused", 0):
        return
    stage = os.environ.get(STAGE_ENV, "")
    if (stage, key) in _seen:
        return
    _seen.add((stage, key))
    path = Path(_trace_dir) / f"params-{os.getpid()}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps({"stage": stage, "key": key}) + "\n")


def read_traces(trace_dir: str | os.PathLike) -> dict[str, set[str]]:
    """Stage -> the params keys its processes read, from a trace folder."""
    reads: dict[str, set[str]] = {}
    for path in Path(trace_dir).glob("params-*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                reads.setdefault(entry["stage"], set()).add(entry["key"])
    return reads
