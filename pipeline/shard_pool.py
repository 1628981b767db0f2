"""The data stages on every GPU: missing shards written by a pool of Ray actors.

``encode`` and ``teacher`` turn every training image into a shard sample through a frozen
network (the VAE, DINOv2). With ``runtime.use_gpu`` they run here: one actor per GPU of the
Ray cluster (``num_gpus=1`` each), each loading the network once and then writing whole
shards, one task per missing shard, handed out as actors free up (:mod:`pipeline.ray_pool`).
Shards are written as :func:`pipeline.shards.write_shards` writes them (temporary name,
renamed when complete), so resuming after a kill and the manifest are the same; the
actors write into the shard folder themselves (no shard travels through the driver), so
with several nodes that folder must be one they all mount (checked before any work).

On a CPU-only study (``use_gpu: false``) the stages keep the in-process path (measured in
docs/REFERENCE_AND_DATA_STAGES.md); the tests run the pool on CPUs (``use_gpu=False``) and
compare its shards with the in-process ones byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cluster import probe
from pipeline.ray_pool import cluster_pool, map_on_pool
from pipeline.shards import missing_shards, num_shards, shard_list, write_shard

Encoder = Callable[[np.ndarray], list[dict[str, bytes]]]  # sample indices -> byte fields
MakeEncoder = Callable[[str], Encoder]  # device -> encoder; picklable, called once per actor


class ShardWork:
    """An actor's work: the encoder built once on its device, then whole shards by index."""

    def __init__(self, make_encoder: MakeEncoder, out_dir: Path, shard_size: int,
                 num_samples: int, batch: int):
        self.make_encoder, self.out_dir = make_encoder, str(out_dir)
        self.shard_size, self.num_samples, self.batch = shard_size, num_samples, batch

    def __call__(self, device: str) -> Callable[[int], int]:
        encode = self.make_encoder(device)
        return lambda index: write_shard(Path(self.out_dir), index, self.shard_size,
                                         self.num_samples, encode, self.batch)


def write_shards_on_ray(out_dir: Path, num_samples: int, shard_size: int,
                        make_encoder: MakeEncoder, fingerprint: str, batch: int = 256,
                        desc: str = "shards", fields: tuple[str, ...] | None = None,
                        use_gpu: bool = True, cpus: float = 1.0) -> list[dict[str, Any]]:
    """:func:`pipeline.shards.write_shards` with the missing shards written by Ray actors
    (:mod:`pipeline.ray_pool`, one task per shard).

    ``make_encoder(device)`` runs once in each actor ("cuda" on its GPU, or "cpu") and
    returns the ``encode(sample indices [b]) -> [byte fields]`` of that process. ``cpus``:
    CPUs (torch threads) per actor. Joins ``$RAY_ADDRESS`` or starts a local Ray. Returns
    the shard list for the manifest.
    """
    shards = num_shards(num_samples, shard_size)
    nodes, size = cluster_pool(use_gpu, cpus, shards)  # refuses before touching any shard
    todo = missing_shards(out_dir, num_samples, shard_size, fingerprint, fields)
    if todo and len({n.ip for n in nodes}) > 1:  # actors on other hosts write here: shared?
        probe(nodes, [], state=out_dir)
    work = ShardWork(make_encoder, out_dir, shard_size, num_samples, batch)
    map_on_pool(work, todo, size, use_gpu, cpus, f"{desc} ({shards - len(todo)}/{shards} "
                "shards kept)", unit="shard")
    return shard_list(out_dir, num_samples, shard_size)
