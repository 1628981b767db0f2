"""A training checkpoint folder, sealed: it loads whole or not at all.

A checkpoint holds ``state.pt`` (tensors only: G, D, EMA, both optimizers, w averages as
G's buffer, step, RNG; loaded with ``weights_only=True``) and, in the final one, the run's
outputs (``generator/``, ``log.csv``, ``final.json``). Its seal, ``step.json``, is written
last in the worker's folder and lists every other file with its size and sha256.

Ray copies a reported folder to the storage file by file; a node that dies during that
copy leaves a folder with files missing or short, possibly with the seal already there.
Ray itself resumes only from checkpoints it registered after the copy, but a folder is
also read by name (a longer run continuing a shorter one). So: a folder counts as a
checkpoint only when every file its seal lists is there with its size (:func:`sealed_step`,
cheap: sizes only), and loading one first checks every sha256 (:func:`verify`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gat.train import GATTrainer
from pipeline.files import file_sha256
from pipeline.storage import StorePath, size

SEAL, STATE = "step.json", "state.pt"
CHECKPOINT_PREFIX = "checkpoint_step"  # + the step, 8 digits (+ "_final": the run's outputs)


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or corrupt; the message names the file."""


def seal(folder: Path, step: int) -> None:
    """Write ``step.json``: the step and {relative path: {bytes, sha256}} of every file."""
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SEAL}
    (folder / SEAL).write_text(json.dumps({"step": step, "files": files}, indent=1))


def read_seal(folder: Path | StorePath) -> dict[str, Any] | None:
    """The seal of a folder, None when it is missing or unreadable (a partial copy)."""
    try:
        info = json.loads((folder / SEAL).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "files" in info else None


def sealed_step(folder: Path | StorePath) -> int | None:
    """The step of a complete checkpoint folder (every sealed file there, at its size)."""
    info = read_seal(folder)
    if info is None:
        return None
    for rel, meta in info["files"].items():
        if size(folder / rel) != meta["bytes"]:
            return None
    return int(info["step"])


def verify(folder: Path) -> dict[str, Any]:
    """Check every sealed file's size and sha256; returns the seal. Raises CheckpointError
    naming the first file that is missing, short or different."""
    info = read_seal(folder)
    if info is None:
        raise CheckpointError(f"{folder / SEAL}: missing or unreadable: not a complete "
                              "checkpoint (interrupted while it was written); delete the "
                              "folder to resume from the one before it")
    for rel, meta in info["files"].items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != meta["bytes"] or (
                file_sha256(path) != meta["sha256"]):
            raise CheckpointError(f"{path}: missing, short or changed since the checkpoint "
                                  f"of step {info['step']} was sealed (interrupted while it "
                                  "was written); delete the folder to resume from the one "
                                  "before it")
    return info


def latest(run_dir: Path | StorePath) -> tuple[int, Path | StorePath] | None:
    """(step, folder) of the newest complete checkpoint in a Ray run folder, if any. Of two
    at one step (the state reported before the last step's FD proxy, then the final one),
    the final: the worker names them ``checkpoint_step<step>`` and ``..._final`` (a Tune
    trial's are Ray's ``checkpoint_<date and time>``, in order too)."""
    found = [(step, folder.parent) for folder in run_dir.glob(f"checkpoint_*/{SEAL}")
             if (step := sealed_step(folder.parent)) is not None]
    return max(found, key=lambda item: (item[0], item[1].name)) if found else None


@contextlib.contextmanager
def local_copy(folder: Path | StorePath) -> Iterator[Path]:
    """A checkpoint folder on this machine's disk: itself, or downloaded by Ray."""
    if isinstance(folder, Path):
        yield folder
        return
    from ray.train import Checkpoint

    with Checkpoint(str(folder)).as_directory() as local:
        yield Path(local)


def save_state(trainer: GATTrainer, folder: Path) -> None:
    """The trainer's state into ``folder``, then the seal over everything in it."""
    torch.save(trainer.state_dict(), folder / STATE)
    seal(folder, trainer.step_count)


def load_state(trainer: GATTrainer, folder: Path, device: torch.device) -> None:
    """Restore the trainer from a local checkpoint folder, after checking its seal."""
    verify(folder)
    state = torch.load(folder / STATE, map_location=device, weights_only=True)
    trainer.load_state_dict(state)
