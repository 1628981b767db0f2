"""The sweep's lr grid and where a trial's report checkpoints go (the trials themselves:
tests/stages/test_sweep.py)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest

from pipeline.config import load_params
from pipeline.storage import StorePath
from pipeline.sweep import lr_grid
from pipeline.training.worker import trial_checkpoint
from tests.helpers import REPO


def test_lr_grid_is_log_spaced_centre_first():
    params = load_params(REPO / "profiles" / "tiny.yaml", check_paths=False)
    params = dataclasses.replace(params, sweep=dataclasses.replace(
        params.sweep, lr_min=1e-4, lr_max=1e-2, num_trials=3))
    assert lr_grid(params) == pytest.approx([1e-3, 1e-4, 1e-2])


def test_a_trials_report_checkpoint_is_its_own():
    """One folder per trial, in its run folder; with remote storage, one in the local temp
    folder named after the trial's run folder (a trial stopped at a report leaves at most
    this one, which the sweep removes)."""
    local = Path(tempfile.gettempdir()) / "tune" / "lr_sweep-x" / "trials" / "t1"
    assert trial_checkpoint(local) == local / "report-checkpoint"
    remote = trial_checkpoint(StorePath("s3://bucket/tune/lr_sweep-x/trials/t1"))
    assert remote.parent == Path(tempfile.gettempdir())
    assert remote.name.startswith("gat-trial-ckpt-")
    assert remote == trial_checkpoint(StorePath("s3://bucket/tune/lr_sweep-x/trials/t1"))
    assert remote != trial_checkpoint(StorePath("s3://bucket/tune/lr_sweep-x/trials/t2"))
