"""Each teacher mode end to end through the real stages (encode, teacher, a short Ray Train
run) on the tiny profile, and the refusals of teacher data that does not fit params."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import DataParams, TeacherParams, TokenizerParams
from pipeline.data import open_split
from pipeline.pretrained.teacher import load_teacher, small_dinov2
from pipeline.pretrained.tokenizer import small_autoencoder
from pipeline.shards import decode_tokens, iter_samples, mirror_tokens, read_manifest
from tests.helpers import REPO, dvc_env, tiny_params, write_params
from tests.lane import lane_test
from tests.pipeline.test_data import make_imagefolder

pytestmark = pytest.mark.slow


def _root(tmp_path):
    """A GAT_ROOT with 7 images (14 samples with flips), a tiny saved tokenizer and a tiny
    saved Dinov2Model as the `train` teacher (8x8 grid of 4 px patches at 32 px)."""
    root = tmp_path / "root"
    make_imagefolder(tmp_path / "images")
    small_autoencoder(TokenizerParams(block_out_channels=[8, 16])).save_pretrained(
        root / "data" / "tokenizer")
    torch.manual_seed(0)
    small_dinov2(TeacherParams(hidden_size=32, layers=1, patch_size=4), 32).save_pretrained(
        root / "data" / "teacher_model")
    return root


def _params(root, tmp_path, mode, encoding="fp16", mirror=False):
    images = str(tmp_path / "images")
    params = tiny_params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", workers=1, batch=4,
                         iterations=2, checkpoint_every=2, log_every=1, fd_every=0,
                         sample_every=0, loader_workers=0, shuffle_buffer=4)
    params = dataclasses.replace(
        params, data=DataParams(source="imagefolder", path=images, eval_path=images,
                                resolution=32, hflip=True, shard_size=4),
        teacher=dataclasses.replace(params.teacher, mode=mode, encoding=encoding,
                                    mirror=mirror))
    write_params(params, root / "params.yaml")
    return params


def _stage(root, *args):
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _ok(done):
    assert done.returncode == 0, done.stderr[-3000:]


def _refused(done, command):
    assert done.returncode != 0 and command in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr  # a one-line error, before Ray starts


def _train(root):
    return _stage(root, "stages.train", "GAT-T1/4")


def _trained(root, params):
    out = root / "results" / "train" / "GAT-T1" / "4" / "seed0"
    metrics = json.loads((out / "metrics.json").read_text())
    log = pd.read_csv(out / "log.csv")
    assert metrics["steps"] == 2 and list(log["step"]) == [1, 2]
    assert (log["repa"] > 0).all() and np.isfinite(log["repa"]).all()  # REPA ran
    return metrics


@lane_test()  # subprocesses only: it runs beside the other tests (tests/lane.py)
def test_cached_int8_mirror_then_online_with_refusals(tmp_path):
    root = _root(tmp_path)
    params = _params(root, tmp_path, "cached", "int8", mirror=True)
    _ok(_stage(root, "stages.encode"))
    _ok(_stage(root, "stages.teacher"))
    tokens_dir = root / "data" / "teacher"
    manifest = read_manifest(tokens_dir, verify=True)
    assert (manifest["mode"], manifest["encoding"], manifest["mirror"]) == ("cached", "int8",
                                                                            True)
    stored = {k: f["tok.bin"] for s in manifest["shards"]
              for k, f in iter_samples(tokens_dir / s["name"])}
    assert sorted(stored) == [f"{j:09d}" for j in range(14)]
    assert all(stored[f"{j:09d}"] == b"" for j in range(1, 14, 2))  # flipped: not stored
    # Even samples: the teacher's own tokens of image j/2, within int8's error; what a
    # flipped sample reads (the mirror) against the flipped image's own tokens: reported.
    teacher = load_teacher(str(root / "data" / "teacher_model"))
    images = open_split(params.data, "train").load(np.arange(7))
    own = teacher.tokens(images)
    shape = manifest["token_shape"]
    decoded = torch.stack([decode_tokens(stored[f"{2 * i:09d}"], 1, shape, "int8")[0]
                           for i in range(7)])
    assert float((decoded - own).norm() / own.norm()) < 0.02
    assert torch.equal(mirror_tokens(mirror_tokens(decoded, 8), 8), decoded)
    _ok(_train(root))
    _trained(root, params)

    # Online params against cached data: the teacher stage must run again; then it refuses
    # shards without pixels, naming the encode stage.
    _params(root, tmp_path, "online")
    _refused(_train(root), "dvc repro teacher")
    _refused(_stage(root, "stages.teacher"), "dvc repro encode")
    _ok(_stage(root, "stages.encode"))
    latents = read_manifest(root / "data" / "shards" / "train")
    assert latents["pixels"] == [3, 32, 32]
    _ok(_stage(root, "stages.teacher"))
    assert sorted(p.name for p in tokens_dir.iterdir()) == ["fingerprint.txt",
                                                           "manifest.json"]
    assert read_manifest(tokens_dir)["mode"] == "online"
    _ok(_train(root))
    metrics = _trained(root, params)
    history = MlflowClient(params.tracking.uri).get_metric_history(metrics["mlflow_run_id"],
                                                                   "teacher_time_s")
    assert len(history) == 2 and all(m.value > 0 for m in history)

    # Cached params against the online manifest: `dvc repro teacher`. Online manifest but
    # latents re-encoded without pixels: `dvc repro encode`.
    _params(root, tmp_path, "cached", "int8", mirror=True)
    _refused(_train(root), "dvc repro teacher")
    _ok(_stage(root, "stages.encode"))  # cached: no pixels
    _params(root, tmp_path, "online")
    _refused(_train(root), "dvc repro encode")
