"""Encode stage and webdataset shards: counts, round trip, resume after SIGKILL, loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
from tests.helpers import make_synthetic_shards


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


def _keys_of_rank(shard_dir: str, rank: int) -> list[str]:
    loader = make_train_loader(shard_dir, 16, rank=rank, world_size=2, num_workers=2,
                               epochs=1, with_keys=True, shuffle_buffer=20)
    return [k for batch in loader for k in batch["keys"]]


@pytest.mark.slow
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


def test_the_shuffle_buffer_is_a_workers_split_among_its_loader_processes():
    """train.shuffle_buffer bounds a Ray worker's memory whatever runtime.loader_workers is."""
    from pipeline.shards import process_buffer

    assert process_buffer(20000, 6) == 3334 and process_buffer(20000, 1) == 20000
    assert process_buffer(20000, 0) == 20000  # in-process loading
    assert process_buffer(4, 6) == 1  # never empty
    assert 6 * process_buffer(20000, 6) - 20000 < 6  # the worker's total stays the buffer
