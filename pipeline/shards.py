"""Webdataset latent shards: writing (atomic, resumable), the manifest, and the train loader.

Layout of a shard directory::

    shard-000000.tar   samples j in [0, S), S = data.shard_size; key f"{j:09d}"
    shard-000001.tar   ...
    manifest.json      counts, shard list with sha256, latent shape, tokenizer, scale factor

A latent sample holds ``lat.bin`` (posterior mean and std, fp16 [2, C, h, w]) and ``cls``
(label, ASCII). A teacher shard with the same name holds ``tok.bin`` (fp16 [1+n, T]) under
the same keys, so the loader can read both in lockstep. Sample j is source image j // 2,
flipped when j is odd (with data.hflip), else source image j.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from pipeline.files import atomic_path, write_json

MANIFEST = "manifest.json"
# Where the pipeline keeps them, relative to the repo root (pipeline.params.REPO_ROOT).
TRAIN_SHARDS, TEACHER_TOKENS = "data/shards/train", "data/teacher"


class ShardError(ValueError):
    """A shard directory is unusable; the message names the file and what to do."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_plan(num_images: int, hflip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(source image index [M], flipped [M]) for every sample j; M = N or 2N with flips."""
    if not hflip:
        return np.arange(num_images), np.zeros(num_images, dtype=bool)
    return np.repeat(np.arange(num_images), 2), np.tile([False, True], num_images)


def write_shards(
    out_dir: Path,
    num_samples: int,
    shard_size: int,
    encode: Callable[[np.ndarray], list[dict[str, bytes]]],
    fingerprint: str,
    batch: int = 256,
    desc: str = "shards",
) -> list[dict[str, Any]]:
    """Write every missing shard of ``num_samples`` samples; return the shard list.

    ``encode(sample_indices)`` returns one dict of byte fields per sample. Each shard is
    written to a temporary name and renamed when complete, so a killed run leaves only
    whole shards; rerunning writes just the missing ones. ``fingerprint`` identifies what
    produced the shards (tokenizer, data params): shards of another fingerprint are removed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / "fingerprint.txt"
    if stamp.exists() and stamp.read_text() != fingerprint:
        for old in out_dir.glob("shard-*.tar*"):
            old.unlink()
    stamp.write_text(fingerprint)
    num_shards = -(-num_samples // shard_size)
    todo = [s for s in range(num_shards) if not (out_dir / shard_name(s)).exists()]
    with tqdm(total=num_samples, desc=desc, unit="sample", mininterval=5,
              initial=num_samples - sum(_shard_len(s, shard_size, num_samples) for s in todo)
              ) as bar:
        for s in todo:
            start, stop = s * shard_size, min((s + 1) * shard_size, num_samples)
            with atomic_path(out_dir / shard_name(s)) as tmp:
                with wds.TarWriter(str(tmp)) as sink:
                    for b0 in range(start, stop, batch):
                        idx = np.arange(b0, min(b0 + batch, stop))
                        for j, fields in zip(idx, encode(idx)):
                            sink.write({"__key__": f"{j:09d}", **fields})
                        bar.update(len(idx))
    return [{"name": shard_name(s), "samples": _shard_len(s, shard_size, num_samples),
             "sha256": sha256(out_dir / shard_name(s))} for s in range(num_shards)]


def _shard_len(s: int, shard_size: int, total: int) -> int:
    return min((s + 1) * shard_size, total) - s * shard_size


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(out_dir / MANIFEST, manifest)


def read_manifest(shard_dir: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """The manifest of a shard directory; with ``verify`` every shard's sha256 is checked."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise ShardError(f"{path}: missing; run the `encode` stage (dvc repro encode) first")
    manifest = json.loads(path.read_text())
    for shard in manifest["shards"]:
        file = Path(shard_dir) / shard["name"]
        if not file.exists():
            raise ShardError(f"{file}: listed in {path} but missing; rerun `dvc repro encode`")
        if verify and sha256(file) != shard["sha256"]:
            raise ShardError(f"{file}: sha256 does not match {path} (corrupt or replaced); "
                             "delete it and rerun `dvc repro encode`")
    return manifest


def latent_fields(mean: np.ndarray, std: np.ndarray, label: int) -> dict[str, bytes]:
    """One sample's byte fields: fp16 [2, C, h, w] posterior and the label."""
    return {"lat.bin": np.stack([mean, std]).astype(np.float16).tobytes(),
            "cls": str(int(label)).encode()}


def token_fields(tokens: np.ndarray) -> dict[str, bytes]:
    return {"tok.bin": tokens.astype(np.float16).tobytes()}


# ----------------------------------------------------------------------------- loader


def _identity(src):
    return src


def _read_shard(path: Path) -> Iterator[dict[str, Any]]:
    # Splitting is done here by whole shards, so webdataset's own splitters are off.
    return iter(wds.WebDataset(str(path), shardshuffle=False, nodesplitter=_identity,
                               workersplitter=_identity, empty_check=False))


class LatentStream(IterableDataset):
    """Batches of (latents [B,C,h,w], labels [B], teacher [B,1+n,T] or None), endless.

    Shards are dealt round-robin to the (Ray worker, DataLoader worker) slots after one
    seeded permutation per epoch, shared by all slots: every sample is read exactly once
    per epoch across all of them. A shuffle buffer mixes samples within a slot. Latents are
    drawn from the stored posterior, ``(mean + std * eps) * scale_factor``.
    """

    def __init__(self, shard_dir: str | os.PathLike, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000,
                 teacher_dir: str | os.PathLike | None = None, epochs: int | None = None,
                 with_keys: bool = False):
        super().__init__()
        self.shard_dir, self.teacher_dir = Path(shard_dir), teacher_dir and Path(teacher_dir)
        manifest = read_manifest(self.shard_dir)
        self.shards = [s["name"] for s in manifest["shards"]]
        self.shape = tuple(manifest["latent_shape"])
        self.scale = float(manifest["scale_factor"])
        self.token_shape = None
        if self.teacher_dir:
            self.token_shape = tuple(read_manifest(self.teacher_dir)["token_shape"])
        self.batch_size, self.rank, self.world = batch_size, rank, world_size
        self.seed, self.buffer, self.epochs = seed, shuffle_buffer, epochs
        self.with_keys = with_keys

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + wid, self.world * workers

    def _samples(self, shards: list[str]) -> Iterator[tuple]:
        for name in shards:
            lat = _read_shard(self.shard_dir / name)
            tok = _read_shard(self.teacher_dir / name) if self.teacher_dir else None
            for sample in lat:
                tokens = None
                if tok is not None:
                    t = next(tok)
                    if t["__key__"] != sample["__key__"]:
                        raise ShardError(f"{self.teacher_dir / name}: key {t['__key__']} where "
                                         f"{sample['__key__']} was expected; rerun the "
                                         "`teacher` stage")
                    tokens = np.frombuffer(t["tok.bin"], np.float16).reshape(self.token_shape)
                lat_arr = np.frombuffer(sample["lat.bin"], np.float16).reshape(2, *self.shape)
                yield sample["__key__"], lat_arr, int(sample["cls"]), tokens

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, slots = self._slot()
        epoch = 0
        rng = random.Random(self.seed * 1000 + slot)
        gen = torch.Generator().manual_seed(self.seed * 1000 + slot)
        while self.epochs is None or epoch < self.epochs:
            order = list(self.shards)
            random.Random(self.seed + epoch).shuffle(order)  # same on every slot
            buffer: list[tuple] = []
            batch: list[tuple] = []
            for item in self._samples(order[slot::slots]):
                buffer.append(item)
                if len(buffer) < self.buffer:
                    continue
                batch.append(buffer.pop(rng.randrange(len(buffer))))
                if len(batch) == self.batch_size:
                    yield self._collate(batch, gen)
                    batch = []
            rng.shuffle(buffer)
            for item in buffer:
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield self._collate(batch, gen)
                    batch = []
            if batch and self.epochs is not None:
                yield self._collate(batch, gen)  # epoch mode: the remainder too
            epoch += 1

    def _collate(self, items: list[tuple], gen: torch.Generator) -> dict[str, Any]:
        lat = torch.from_numpy(np.stack([it[1] for it in items]).astype(np.float32))
        eps = torch.randn(lat[:, 0].shape, generator=gen)
        out = {"latents": (lat[:, 0] + lat[:, 1] * eps) * self.scale,
               "labels": torch.tensor([it[2] for it in items], dtype=torch.long),
               "teacher": None}
        if self.teacher_dir:
            out["teacher"] = torch.from_numpy(np.stack([it[3] for it in items]).astype(np.float32))
        if self.with_keys:
            out["keys"] = [it[0] for it in items]
        return out


def make_train_loader(shard_dir: str | os.PathLike, batch_size: int, rank: int = 0,
                      world_size: int = 1, num_workers: int = 1, seed: int = 0,
                      shuffle_buffer: int = 1000, teacher_dir: str | os.PathLike | None = None,
                      epochs: int | None = None, with_keys: bool = False) -> DataLoader:
    """DataLoader over :class:`LatentStream`: batches are built inside the workers."""
    stream = LatentStream(shard_dir, batch_size, rank, world_size, seed, shuffle_buffer,
                          teacher_dir, epochs, with_keys)
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0 and epochs is None,
                      collate_fn=_identity)

