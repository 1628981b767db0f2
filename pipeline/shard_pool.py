"""The data stages on every GPU: missing shards written by a pool of Ray actors.

``encode`` and ``teacher`` turn every training image into a shard sample through a frozen
network (the VAE, DINOv2). With ``runtime.use_gpu`` they run here: one actor per GPU of the
Ray cluster (``num_gpus=1`` each), each loading the network once and then writing whole
shards, one task per missing shard, handed out by ``ray.util.ActorPool`` as actors free up.
Shards are written as :func:`pipeline.shards.write_shards` writes them (temporary name,
renamed when complete), so resuming after a kill and the manifest are the same; the
actors write into the shard folder themselves (no shard travels through the driver), so
with several nodes that folder must be one they all mount (checked before any work).

On a CPU-only study (``use_gpu: false``) the stages keep the in-process path: on one
machine a pool of CPU actors adds Ray's start-up and splits the same cores (measured in
docs/REFERENCE_AND_DATA_STAGES.md), it gains nothing. The pool still runs on CPUs
(``use_gpu=False``): the tests compare its shards with the in-process ones byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.cluster import ClusterError, Node, alive_nodes, probe
from pipeline.shards import missing_shards, num_shards, shard_list, write_shard

Encoder = Callable[[np.ndarray], list[dict[str, bytes]]]  # sample indices -> byte fields
MakeEncoder = Callable[[str], Encoder]  # device -> encoder; picklable, called once per actor


def pool_size(nodes: list[Node], use_gpu: bool, cpus: float, shards: int) -> int:
    """Actors to start: one per GPU of the cluster (``use_gpu``), else one per ``cpus``
    CPUs; never more than ``shards``. Refuses a GPU study on a cluster without GPUs, where
    it would crawl on CPUs instead."""
    have = ", ".join(f"{n.label}: {n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes)
    if use_gpu:
        slots = sum(math.floor(n.gpus + 1e-9) for n in nodes if n.cpus >= cpus)
        if slots == 0:
            raise ClusterError(
                f"runtime.use_gpu is true (a GPU study), but the Ray cluster has no GPU on a "
                f"node with runtime.cpus_per_worker={cpus:g} CPUs ({have}): start the stage "
                "where the GPU nodes joined the cluster ($RAY_ADDRESS, docker: `exec "
                "ray-worker`), or set runtime.use_gpu: false to encode on CPUs on purpose")
    else:
        slots = sum(n.fits(cpus, 0) for n in nodes)
        if slots == 0:
            raise ClusterError(f"runtime.cpus_per_worker={cpus:g}: no Ray node has that many "
                               f"CPUs ({have}); lower it")
    return max(1, min(slots, shards))


class _ShardWriter:
    """One actor: the encoder built once (model loaded on its GPU), then whole shards."""

    def __init__(self, make_encoder: MakeEncoder, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.encode = make_encoder(device)

    def write(self, out_dir: str, index: int, shard_size: int, num_samples: int,
              batch: int) -> int:
        return write_shard(Path(out_dir), index, shard_size, num_samples, self.encode, batch)


def write_shards_on_ray(out_dir: Path, num_samples: int, shard_size: int,
                        make_encoder: MakeEncoder, fingerprint: str, batch: int = 256,
                        desc: str = "shards", fields: tuple[str, ...] | None = None,
                        use_gpu: bool = True, cpus: float = 1.0) -> list[dict[str, Any]]:
    """:func:`pipeline.shards.write_shards` with the missing shards written by Ray actors.

    ``make_encoder(device)`` runs once in each actor ("cuda" on its GPU, or "cpu") and
    returns the ``encode(sample indices [b]) -> [byte fields]`` of that process. ``cpus``:
    CPUs (torch threads) per actor. Joins ``$RAY_ADDRESS`` or starts a local Ray. Returns
    the shard list for the manifest.
    """
    import ray
    from ray.util import ActorPool

    from pipeline.ray_utils import init_ray

    init_ray()
    nodes = alive_nodes()
    shards = num_shards(num_samples, shard_size)
    size = pool_size(nodes, use_gpu, cpus, shards)  # refuses before touching any shard
    todo = missing_shards(out_dir, num_samples, shard_size, fingerprint, fields)
    if todo:
        if len({n.ip for n in nodes}) > 1:  # actors on other hosts write here: shared?
            probe(nodes, [], state=out_dir)
        actor = ray.remote(num_cpus=cpus, num_gpus=1 if use_gpu else 0,
                           max_restarts=0)(_ShardWriter)
        device, threads = ("cuda" if use_gpu else "cpu"), max(1, int(cpus))
        actors = [actor.remote(make_encoder, device, threads) for _ in range(size)]
        pool = ActorPool(actors)
        try:
            with tqdm(total=shards, initial=shards - len(todo), unit="shard",
                      desc=f"{desc} ({size} {'GPU' if use_gpu else 'CPU'} workers)") as bar:
                for _ in pool.map_unordered(lambda a, s: a.write.remote(
                        str(out_dir), s, shard_size, num_samples, batch), todo):
                    bar.update(1)
        finally:
            for a in actors:
                ray.kill(a)
    return shard_list(out_dir, num_samples, shard_size)
