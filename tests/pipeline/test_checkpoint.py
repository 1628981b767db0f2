"""Sealed checkpoints: a folder interrupted while it was written never loads, and is never
picked to continue from."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gat.train import GATTrainer, TrainConfig
from pipeline.storage import location, write_text
from pipeline.training.checkpoint import (
    SEAL,
    STATE,
    CheckpointError,
    latest,
    load_state,
    save_state,
    sealed_step,
)


def _trainer(step: int) -> GATTrainer:
    """A small trainer whose counter says ``step`` (what the seal records)."""
    trainer = GATTrainer("GAT-T1/4", 4, 8, 4, 8, TrainConfig(repa_weight=0.0, augment=False))
    trainer.step_count = step
    return trainer


def test_interrupted_checkpoint_never_loads_half(tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(1)
    good = run / "checkpoint_1"
    good.mkdir(parents=True)
    save_state(trainer, good)
    # A later checkpoint that a dying node left: the seal arrived, state.pt only in part.
    torn = run / "checkpoint_2"
    torn.mkdir()
    trainer.step_count = 2
    save_state(trainer, torn)
    data = (torn / STATE).read_bytes()
    (torn / STATE).write_bytes(data[: len(data) // 2])
    # And one whose state.pt has its full size but other bytes (a copy that went wrong).
    bent = run / "checkpoint_3"
    shutil.copytree(torn.parent / "checkpoint_1", bent)
    seal = json.loads((bent / SEAL).read_text())
    (bent / SEAL).write_text(json.dumps({**seal, "step": 3}))
    state = bytearray((bent / STATE).read_bytes())
    state[len(state) // 2] ^= 0xFF
    (bent / STATE).write_bytes(bytes(state))
    # Without a seal at all: not a checkpoint.
    (run / "checkpoint_4").mkdir()
    (run / "checkpoint_4" / STATE).write_bytes(data)

    assert sealed_step(torn) is None and sealed_step(run / "checkpoint_4") is None
    assert latest(run) == (3, bent)  # sizes match: the cheap scan takes it ...
    trainer.step_count = 0
    with pytest.raises(CheckpointError, match=r"checkpoint_3/state.pt: missing, short or "
                                              r"changed .* step 3"):
        load_state(trainer, bent, torch.device("cpu"))  # ... the load checks every byte
    with pytest.raises(CheckpointError, match=r"checkpoint_2/state.pt"):
        load_state(trainer, torn, torch.device("cpu"))
    with pytest.raises(CheckpointError, match=r"checkpoint_4/step.json: missing"):
        load_state(trainer, run / "checkpoint_4", torch.device("cpu"))
    assert trainer.step_count == 0  # nothing was loaded
    load_state(trainer, good, torch.device("cpu"))
    assert trainer.step_count == 1


def test_latest_on_an_object_store_uri():
    """The same scan through pyarrow (its in-process mock filesystem)."""
    run = location("mock:///runs/key-8")
    for step, complete in ((4, True), (8, False)):
        folder = run / f"checkpoint_{step}"
        write_text(folder / STATE, "x" * 10 if complete else "x" * 3)
        write_text(folder / SEAL, json.dumps({"step": step, "files": {
            STATE: {"bytes": 10, "sha256": "-"}}}))
    assert latest(run) == (4, run / "checkpoint_4")
