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

from pipeline.config import DataParams, Params, TokenizerParams
from pipeline.data import open_split
from pipeline.pretrained.tokenizer import SCALE_FILE, load_tokenizer, small_autoencoder
from pipeline.shards import (
    ShardError,
    assign_shards,
    iter_samples,
    latent_fields,
    make_train_loader,
    read_manifest,
    token_fields,
    write_manifest,
    write_shards,
)
from tests.helpers import FASHION, REPO, dvc_env, make_synthetic_shards, write_params
from tests.test_data import make_imagefolder


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
        lat, _ = stored["000000001"]
        torch.testing.assert_close(torch.from_numpy(lat[0].astype(np.float32)), flipped[0],
                                   atol=2e-3, rtol=2e-3)
        assert not torch.allclose(flipped[0], mean[0], atol=1e-2)


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


def test_sha_mismatch_names_the_shard(tmp_path):
    make_synthetic_shards(tmp_path, samples=64, shard_size=32)
    shard = tmp_path / "data" / "shards" / "train" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a sample
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 does not match"):
        read_manifest(tmp_path / "data" / "shards" / "train", verify=True)


def test_rerun_rewrites_only_damaged_or_missing_shards(tmp_path):
    calls: list[int] = []

    def encode(idx):
        calls.extend(idx.tolist())
        return [latent_fields(np.full((1, 2, 2), j), np.zeros((1, 2, 2)), j % 3) for j in idx]

    write_shards(tmp_path, 50, 10, encode, "fp", batch=4, fields=("cls", "lat.bin"))
    assert sorted(calls) == list(range(50))
    (tmp_path / "shard-000001.tar").unlink()
    data = (tmp_path / "shard-000003.tar").read_bytes()
    (tmp_path / "shard-000003.tar").write_bytes(data[: len(data) // 2])  # damaged
    (tmp_path / ".tmp-shard-000004.tar").write_bytes(b"left by a kill")
    calls.clear()
    shards = write_shards(tmp_path, 50, 10, encode, "fp", batch=4, fields=("cls", "lat.bin"))
    assert sorted(calls) == [*range(10, 20), *range(30, 40)]
    assert not list(tmp_path.glob(".tmp-*")) and len(shards) == 5
    keys = [k for s in shards for k, _ in iter_samples(tmp_path / s["name"])]
    assert keys == [f"{j:09d}" for j in range(50)]
    calls.clear()
    write_shards(tmp_path, 50, 10, encode, "other inputs", batch=4)  # new fingerprint
    assert sorted(calls) == list(range(50))


def test_failed_encode_never_publishes_a_partial_shard(tmp_path):
    def encode(idx):
        if idx[0] >= 14:
            raise RuntimeError("GPU fell over")
        return [latent_fields(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 0) for _ in idx]

    with pytest.raises(RuntimeError, match="GPU fell over"):
        write_shards(tmp_path, 40, 10, encode, "fp", batch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fingerprint.txt",
                                                          "shard-000000.tar"]


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


def test_fewer_shards_than_readers_still_splits_exactly_once(tmp_path):
    for shards, slots in ((["a", "b", "c"], 4), (["a"], 3), (list("abcdefg"), 3)):
        parts = [assign_shards(shards, s, slots) for s in range(slots)]
        assert all(parts)  # nobody idles (an endless loader would spin forever)
        covered = sorted((name, pos) for part in parts for name, p, n in part
                         for pos in range(12) if pos % n == p)
        assert covered == sorted((name, pos) for name in shards for pos in range(12))
    make_synthetic_shards(tmp_path, samples=30, shard_size=10)  # 3 shards, 4 readers
    keys = [k for rank in range(4) for b in make_train_loader(
        tmp_path / "data" / "shards" / "train", 4, rank, 4, num_workers=0, epochs=2,
        with_keys=True) for k in b["keys"]]
    assert sorted(keys) == sorted(2 * [f"{j:09d}" for j in range(30)])


def test_loader_batches_aligned_latents_labels_and_teacher(tmp_path):
    """Latent mean j, std 0 and teacher tokens j for sample j: alignment is visible."""
    shard_dir, teacher_dir = tmp_path / "lat", tmp_path / "tok"
    shards = write_shards(shard_dir, 96, 16, lambda idx: [
        latent_fields(np.full((4, 2, 2), j), np.zeros((4, 2, 2)), j % 7) for j in idx], "x")
    write_manifest(shard_dir, {"samples": 96, "shards": shards, "num_classes": 7,
                               "latent_shape": [4, 2, 2], "scale_factor": 0.5})
    tshards = write_shards(teacher_dir, 96, 16, lambda idx: [
        token_fields(np.full((5, 3), j)) for j in idx], "x")
    write_manifest(teacher_dir, {"samples": 96, "shards": tshards, "token_shape": [5, 3]})
    loader = make_train_loader(shard_dir, 8, num_workers=0, teacher_dir=teacher_dir)
    stream = iter(loader)
    for _ in range(30):  # endless: more batches than one epoch (12) holds
        batch = next(stream)
        assert batch["latents"].shape == (8, 4, 2, 2) and batch["latents"].dtype == torch.float32
        assert batch["labels"].dtype == torch.long and batch["teacher"].shape == (8, 5, 3)
        j = batch["latents"][:, 0, 0, 0] / 0.5  # scale factor applied
        assert torch.equal(batch["teacher"][:, 0, 0], j)
        assert torch.equal(batch["labels"], j.long() % 7)


def test_posterior_std_is_sampled(tmp_path):
    make_synthetic_shards(tmp_path, samples=64, shard_size=64)  # mean ~ N(c/4, 1), std 0.1
    draws = []
    for seed in (1, 2):
        batch = next(iter(make_train_loader(tmp_path / "data" / "shards" / "train", 64,
                                            num_workers=0, epochs=1, seed=seed,
                                            with_keys=True)))
        draws.append(batch["latents"][np.argsort(batch["keys"])])
    diff = draws[0] - draws[1]
    assert 0.1 < diff.std() < 0.2  # two draws of mean + 0.1 * eps differ by 0.1 * sqrt(2)
