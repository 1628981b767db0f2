"""The encode stage: an image folder with bad files, counts, round trip through the
tokenizer, and a SIGKILL midway whose rerun keeps finished shards."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pipeline.config import DataParams, Params, TokenizerParams
from pipeline.data import open_split
from pipeline.pretrained.tokenizer import SCALE_FILE, load_tokenizer, small_autoencoder
from pipeline.shards import iter_samples, make_train_loader, read_manifest
from tests.helpers import FASHION, REPO, dvc_env, write_params
from tests.pipeline.test_data import make_imagefolder

pytestmark = pytest.mark.slow


def _root_with_tokenizer(root, data: DataParams, encode_batch: int = 256) -> dict[str, str]:
    """A GAT_ROOT with a tiny saved AutoencoderKL as the `train` tokenizer and params."""
    vae = small_autoencoder(TokenizerParams(block_out_channels=[8, 16]))
    vae.save_pretrained(root / "data" / "tokenizer")
    (root / "data" / "tokenizer" / SCALE_FILE).write_text(json.dumps({"scale_factor": 0.5}))
    params = dataclasses.replace(Params(), data=data, tracking=dataclasses.replace(
        Params().tracking, uri=f"sqlite:///{root / 'mlflow.db'}"),
        runtime=dataclasses.replace(Params().runtime, encode_batch=encode_batch))
    write_params(params, root / "params.yaml")
    return {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}


def _stored(shard_dir, manifest) -> dict[str, tuple[np.ndarray, int]]:
    """key -> (posterior fp16 [2, C, h, w], label) of every stored sample."""
    shape = manifest["latent_shape"]
    return {key: (np.frombuffer(f["lat.bin"], np.float16).reshape(2, *shape), int(f["cls"]))
            for s in manifest["shards"] for key, f in iter_samples(shard_dir / s["name"])}


def _assert_means_equal_tokenizer(root, data: DataParams, stored, hflip: bool) -> None:
    tok = load_tokenizer(str(root / "data" / "tokenizer"))
    ds = open_split(data, "train")
    images = ds.load(np.arange(len(ds)))
    mean, _ = tok.encode(images)
    step = 2 if hflip else 1
    for i in range(len(ds)):
        lat, label = stored[f"{step * i:09d}"]
        torch.testing.assert_close(torch.from_numpy(lat[0].astype(np.float32)), mean[i],
                                   atol=2e-3, rtol=2e-3)
        assert label == ds.labels[i]
    if hflip:  # odd samples: the mirrored image's latents
        flipped, _ = tok.encode(images.flip(-1))
        for i in range(len(ds)):
            lat, _ = stored[f"{2 * i + 1:09d}"]
            torch.testing.assert_close(torch.from_numpy(lat[0].astype(np.float32)),
                                       flipped[i], atol=2e-3, rtol=2e-3)
        # the flips are not the images (a flat white image would be its own flip)
        assert any(not torch.allclose(flipped[i], mean[i], atol=1e-2) for i in range(len(ds)))


def test_encode_imagefolder_counts_skips_and_roundtrip(tmp_path):
    root = tmp_path / "root"
    make_imagefolder(tmp_path / "images")
    data = DataParams(source="imagefolder", path=str(tmp_path / "images"),
                      eval_path=str(tmp_path / "images"), shard_size=4, hflip=True)
    env = _root_with_tokenizer(root, data)
    done = subprocess.run([sys.executable, "-m", "stages.encode"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    shard_dir = root / "data" / "shards" / "train"
    manifest = read_manifest(shard_dir, verify=True)
    assert manifest["images"] == 7 and manifest["samples"] == 14  # + flipped copies
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 4, 2]
    assert manifest["counts_per_class"] == {"cat": 3, "dog": 4, "empty": 0}
    assert manifest["classes"] == ["cat", "dog", "empty"] and manifest["num_classes"] == 3
    assert {e["file"].rsplit("/", 1)[-1] for e in manifest["skipped"]} == {
        "broken.jpg", "truncated.jpg", "tiny.png", "notes.txt", "empty"}
    assert manifest["latent_shape"] == [4, 16, 16] and manifest["scale_factor"] == 0.5
    stored = _stored(shard_dir, manifest)
    assert sorted(stored) == [f"{j:09d}" for j in range(14)]
    _assert_means_equal_tokenizer(root, data, stored, hflip=True)


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
def test_encode_killed_midway_then_rerun_completes(tmp_path):
    root = tmp_path / "root"
    data = DataParams(train_limit=1200, shard_size=40, hflip=False)
    env = _root_with_tokenizer(root, data, encode_batch=20)
    shard_dir = root / "data" / "shards" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "stages.encode"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shard_dir.glob("shard-*.tar"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in shard_dir.glob("shard-*.tar"))
    assert 3 <= len(written) < 30, "kill came too late to test resuming"
    assert not (shard_dir / "manifest.json").exists()
    before = {n: (shard_dir / n).stat().st_mtime_ns for n in written}
    done = subprocess.run([sys.executable, "-m", "stages.encode"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all((shard_dir / n).stat().st_mtime_ns == t for n, t in before.items())  # kept
    manifest = read_manifest(shard_dir, verify=True)
    assert manifest["samples"] == 1200 and len(manifest["shards"]) == 30
    keys = [k for batch in make_train_loader(shard_dir, 500, epochs=1, num_workers=0,
                                             with_keys=True) for k in batch["keys"]]
    assert sorted(keys) == [f"{j:09d}" for j in range(1200)]  # none missing, none twice
    assert not list(shard_dir.glob(".tmp-*"))
    sub = dataclasses.replace(data, train_limit=40)  # the first 40: stored == tokenizer's
    stored = _stored(shard_dir, manifest)
    _assert_means_equal_tokenizer(root, sub, stored, hflip=False)
