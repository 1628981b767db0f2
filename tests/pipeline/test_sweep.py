"""The sweep's lr grid (the trials themselves: tests/stages/test_sweep.py)."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import load_params
from pipeline.sweep import lr_grid
from tests.helpers import REPO


def test_lr_grid_is_log_spaced_centre_first():
    params = load_params(REPO / "profiles" / "tiny.yaml", check_paths=False)
    params = dataclasses.replace(params, sweep=dataclasses.replace(
        params.sweep, lr_min=1e-4, lr_max=1e-2, num_trials=3))
    assert lr_grid(params) == pytest.approx([1e-3, 1e-4, 1e-2])
