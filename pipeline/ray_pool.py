"""Frozen-network work spread over every GPU of the Ray cluster: one actor per GPU builds
its network once (the VAE, DINOv2, G with its tokenizer, the FID extractor), then takes
tasks as it frees up (``ray.util.ActorPool``).

The data stages (``encode``, ``teacher``: :mod:`pipeline.shard_pool`) and the evaluation
stages (``reference``, ``evaluate``: :mod:`pipeline.evaluation`) run here with
``runtime.use_gpu``. A CPU-only study keeps its in-process path: on one machine a pool of
CPU actors adds Ray's start-up and splits the same cores, it gains nothing; the pool
still runs on CPUs (``use_gpu=False``), which is how the tests compare the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from pipeline.cluster import ClusterError, Node, alive_nodes

Work = Callable[[Any], Any]  # one task -> its result, in the actor's process
# An actor that dies (its node lost, out of memory) is restarted and its task retried, up
# to this many times: every task is idempotent (a shard is written to a temporary name,
# then renamed; features are pure computation), so a retry gives the same result.
POOL_RESTARTS = 3
MakeWork = Callable[[str], Work]  # device ("cuda" / "cpu") -> work; picklable, once per actor


def pool_size(nodes: list[Node], use_gpu: bool, cpus: float, tasks: int) -> int:
    """Actors to start: one per GPU of the cluster (``use_gpu``), else one per ``cpus``
    CPUs; never more than ``tasks``. Refuses a GPU study on a cluster without GPUs, where
    it would crawl on CPUs instead."""
    have = ", ".join(f"{n.label}: {n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes)
    if use_gpu:
        slots = sum(math.floor(n.gpus + 1e-9) for n in nodes if n.cpus >= cpus)
        if slots == 0:
            raise ClusterError(
                f"runtime.use_gpu is true (a GPU study), but the Ray cluster has no GPU on a "
                f"node with runtime.cpus_per_worker={cpus:g} CPUs ({have}): start the stage "
                "where the GPU nodes joined the cluster ($RAY_ADDRESS, docker: `exec "
                "ray-worker`), or set runtime.use_gpu: false to run on CPUs on purpose")
    else:
        slots = sum(n.fits(cpus, 0) for n in nodes)
        if slots == 0:
            raise ClusterError(f"runtime.cpus_per_worker={cpus:g}: no Ray node has that many "
                               f"CPUs ({have}); lower it")
    return max(1, min(slots, tasks))


def cluster_pool(use_gpu: bool, cpus: float, tasks: int) -> tuple[list[Node], int]:
    """Join ``$RAY_ADDRESS`` (else start a local Ray): its alive nodes, and the actors a
    pool for ``tasks`` tasks gets (:func:`pool_size`: refuses before any work)."""
    from pipeline.ray_utils import init_ray

    init_ray()
    nodes = alive_nodes()
    return nodes, pool_size(nodes, use_gpu, cpus, tasks)


class _Worker:
    """One actor: the work built once (its network loaded on this actor's device)."""

    def __init__(self, make: MakeWork, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.work = make(device)

    def run(self, index: int, task: Any) -> tuple[int, Any]:
        return index, self.work(task)


def map_on_pool(make: MakeWork, tasks: Sequence[Any], workers: int, use_gpu: bool,
                cpus: float, desc: str, amounts: Sequence[int] | None = None,
                unit: str = "task", restarts: int = POOL_RESTARTS) -> list[Any]:
    """``make(device)(task)`` for every task on ``workers`` Ray actors (``num_gpus=1``
    each with ``use_gpu``, ``cpus`` CPUs and torch threads each); the results in task
    order. The bar counts ``amounts[i]`` (e.g. images) per finished task, else 1. An actor
    that dies is restarted and its task retried (Ray's ``max_restarts`` and
    ``max_task_retries``, ``restarts`` times). Ray must be up (:func:`cluster_pool`); the
    actors are killed at the end, also on error."""
    import ray
    from ray.util import ActorPool

    if not tasks:
        return []
    actor = ray.remote(num_cpus=cpus, num_gpus=1 if use_gpu else 0, max_restarts=restarts,
                       max_task_retries=restarts)(_Worker)
    device, threads = ("cuda" if use_gpu else "cpu"), max(1, int(cpus))
    actors = [actor.remote(make, device, threads) for _ in range(workers)]
    amounts = list(amounts) if amounts is not None else [1] * len(tasks)
    results: list[Any] = [None] * len(tasks)
    try:
        with tqdm(total=sum(amounts), unit=unit, mininterval=5,
                  desc=f"{desc} ({workers} {'GPU' if use_gpu else 'CPU'} workers)") as bar:
            for i, result in ActorPool(actors).map_unordered(
                    lambda a, job: a.run.remote(*job), list(enumerate(tasks))):
                results[i] = result
                bar.update(amounts[i])
    finally:
        for a in actors:
            ray.kill(a)
    return results


def map_parts(make: Callable[[int], MakeWork], most: int, use_gpu: bool, cpus: float,
              desc: str) -> list[Any]:
    """Work split into one part per actor (at most ``most`` parts): ``make(parts)`` is the
    work of ``parts`` parts, whose task ``i`` does part ``i``; the results in part order.
    Joins the cluster and refuses a GPU study without GPUs (:func:`cluster_pool`) before
    any work."""
    _, workers = cluster_pool(use_gpu, cpus, most)
    return map_on_pool(make(workers), range(workers), workers, use_gpu, cpus, desc,
                       unit="part")
