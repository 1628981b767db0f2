"""scripts/rehearse.py: the rehearsal's params are the paper profile's, valid, with only
the data, sizes and counts changed (the rehearsal itself is a CI step: .ci/run)."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from pipeline.config import parse_params
from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("rehearse", REPO / "scripts" / "rehearse.py")
rehearse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rehearse)

# What the rehearsal may change; every other key must stay the paper profile's.
CHANGED = {("study", "sizes"), ("data", "path"), ("data", "eval_path"), ("data", "shard_size"),
           ("evaluator", "reference"), ("train", "batch"), ("train", "iterations"),
           ("train", "shuffle_buffer"), ("evaluate", "num_samples"), ("evaluate", "batch"),
           ("evaluate", "grid_seeds"), ("evaluate", "strip_frames")}


def test_rehearsal_keeps_every_paper_setting_but_data_sizes_and_counts(tmp_path):
    paper = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    ours = rehearse.rehearsal_params(tmp_path)
    changed = {(section, key) for section, values in paper.items() for key in values
               if ours[section][key] != values[key]}
    assert {c for c in changed if c[0] != "runtime"} <= CHANGED
    assert {k for s, k in changed if s == "runtime"} <= {
        "workers", "use_gpu", "pool", "cpus_per_worker", "checkpoint_every", "log_every",
        "sample_every", "sample_seeds", "fd_every", "fd_samples", "loader_workers",
        "encode_batch"}
    params = parse_params(ours, check_paths=False)  # its folders are made when it runs
    # the paper path's settings the rehearsal is there to exercise
    assert params.teacher.mode == "online" and params.runtime.precision == "bf16"
    assert params.runtime.allreduce == "bucketed" and params.runtime.workers == 2
    assert params.runtime.on_pool and not params.runtime.use_gpu
    assert params.tokenizer.source == "stabilityai/sd-vae-ft-ema" and params.tokenizer.revision
    assert params.teacher.source == "facebook/dinov2-base" and params.teacher.revision
    assert params.evaluator.source == "inception"
    assert params.evaluator.reference.endswith(".npz") and params.data.hflip


def test_rehearsal_images_are_an_imagenet_layout_the_data_stage_reads(tmp_path):
    from pipeline.config import DataParams
    from pipeline.data import open_split

    rehearse.make_images(tmp_path / "train", per_class=2, seed=0)
    split = open_split(DataParams(source="imagefolder", path=str(tmp_path / "train"),
                                  eval_path=str(tmp_path / "train"), resolution=256), "train")
    assert len(split) == 2 * rehearse.CLASSES and len(split.classes) == rehearse.CLASSES
    images = split.load(list(range(len(split))))
    assert images.shape == (2 * rehearse.CLASSES, 3, 256, 256)  # centre-cropped, resized
    assert images.float().std() > 10  # not a flat colour


def test_on_gpus_the_rehearsal_runs_one_worker_per_gpu(tmp_path):
    params = parse_params(rehearse.rehearsal_params(tmp_path, gpus=4), check_paths=False)
    assert params.runtime.use_gpu and params.runtime.workers == 4
    assert params.train.batch == 8 and params.runtime.on_pool  # 2 per worker, as on CPU


def test_gpu_check_refuses_a_machine_without_a_gpu():
    """scripts/gpu_check.sh names what to run instead, before any work."""
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run")
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "/nonexistent/gat-gpu-check"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "no CUDA GPU visible" in done.stderr
    assert "bash scripts/rehearse.sh" in done.stderr
