"""Encode stage and webdataset shards: counts, round trip, resume after SIGKILL, loader."""

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

from pipeline.params import DataParams, Params, TokenizerParams
from pipeline.pretrained import SCALE_FILE, load_tokenizer, small_autoencoder
from pipeline.shards import (
    LatentStream,
    ShardError,
    make_train_loader,
    read_manifest,
)
from tests.helpers import FASHION, REPO, dvc_env, make_synthetic_shards, write_params
from tests.test_data import make_imagefolder


def _root_with_tokenizer(root, data: DataParams):
    vae = small_autoencoder(TokenizerParams(block_out_channels=[8, 16]))
    vae.save_pretrained(root / "data" / "tokenizer")
    (root / "data" / "tokenizer" / SCALE_FILE).write_text(json.dumps({"scale_factor": 0.5}))
    params = dataclasses.replace(Params(), data=data, tracking=dataclasses.replace(
        Params().tracking, uri=f"sqlite:///{root / 'mlflow.db'}"))
    write_params(params, root / "params.yaml")
    return {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}


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
    assert manifest["images"] == 6 and manifest["samples"] == 12  # + flipped copies
    assert sum(s["samples"] for s in manifest["shards"]) == 12 and len(manifest["shards"]) == 3
    assert manifest["counts_per_class"] == {"cat": 3, "dog": 3, "empty": 0}
    assert {e["file"].rsplit("/", 1)[-1] for e in manifest["skipped"]} >= {"broken.jpg",
                                                                           "truncated.png"}
    assert manifest["latent_shape"] == [4, 16, 16] and manifest["scale_factor"] == 0.5
    # stored posterior means equal the tokenizer's own output on the same images
    from pipeline.data import open_split

    tok = load_tokenizer(str(root / "data" / "tokenizer"))
    images = open_split(data, "train").load(np.arange(6))
    mean, _ = tok.encode(images)
    stream = LatentStream(shard_dir, batch_size=12, epochs=1, shuffle_buffer=1,
                          with_keys=True)
    raw = {}
    for name in (s["name"] for s in manifest["shards"]):
        for key, lat, label, _ in stream._samples([name]):
            raw[key] = (lat, label)
    for j in range(0, 12, 2):  # even samples: unflipped image j // 2
        lat, label = raw[f"{j:09d}"]
        torch.testing.assert_close(torch.from_numpy(lat[0].astype(np.float32)),
                                   mean[j // 2], atol=2e-3, rtol=2e-3)
        assert label == (0 if j // 2 < 3 else 1)
    flipped = torch.from_numpy(raw["000000001"][0][0].astype(np.float32))
    assert not torch.allclose(flipped, mean[0], atol=1e-2)


def test_sha_mismatch_names_the_shard(tmp_path):
    make_synthetic_shards(tmp_path, samples=64, shard_size=32)
    shard = tmp_path / "data" / "shards" / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-512] + b"\0" * 512)
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 does not match"):
        read_manifest(tmp_path / "data" / "shards" / "train", verify=True)


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
def test_encode_killed_midway_then_rerun_completes(tmp_path):
    root = tmp_path / "root"
    data = DataParams(train_limit=3000, shard_size=100, encode_batch=25, hflip=False)
    env = _root_with_tokenizer(root, data)
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
    before = {n: (shard_dir / n).stat().st_mtime for n in written}
    done = subprocess.run([sys.executable, "-m", "stages.encode"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all((shard_dir / n).stat().st_mtime == t for n, t in before.items())  # kept
    keys = [k for batch in make_train_loader(shard_dir, 500, epochs=1, num_workers=0,
                                             with_keys=True) for k in batch["keys"]]
    assert sorted(keys) == [f"{j:09d}" for j in range(3000)]  # none missing, none twice
    assert not list(shard_dir.glob(".tmp-*"))


def _keys_of_rank(shard_dir: str, rank: int) -> list[str]:
    loader = make_train_loader(shard_dir, 16, rank=rank, world_size=2, num_workers=2,
                               epochs=1, with_keys=True, shuffle_buffer=20)
    return [k for batch in loader for k in batch["keys"]]


def test_loader_exactly_once_across_2_ray_workers_x_2_loader_workers(ray_cluster, tmp_path):
    make_synthetic_shards(tmp_path, samples=400, shard_size=25, tokens=(5, 8))
    shard_dir = str(tmp_path / "data" / "shards" / "train")
    task = ray_cluster.remote(num_cpus=0.5)(_keys_of_rank)
    per_rank = ray_cluster.get([task.remote(shard_dir, r) for r in (0, 1)])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == [f"{j:09d}" for j in range(400)]
    assert per_rank[0] != sorted(per_rank[0])  # shuffled


def test_loader_batches_latents_labels_and_teacher(tmp_path):
    make_synthetic_shards(tmp_path, samples=64, shard_size=16)
    loader = make_train_loader(tmp_path / "data" / "shards" / "train", 8, num_workers=0,
                               teacher_dir=tmp_path / "data" / "teacher")
    batch = next(iter(loader))
    assert batch["latents"].shape == (8, 4, 8, 8) and batch["latents"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["teacher"].shape == (8, 5, 8)
    stream = iter(loader)
    for _ in range(20):  # endless: more batches than one epoch holds
        next(stream)
