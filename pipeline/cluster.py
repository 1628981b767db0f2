"""Can this Ray cluster run the job? Checked before any work, each refusal naming what to set.

A run on several nodes needs what one machine gives for free: every node must see the
run's storage (checkpoints, the live log), read the shards, and reach the MLflow server
its rank 0 logs to; the cluster must hold the GPUs and CPUs the run asks for. This module
asks the cluster rather than guessing: :func:`check_resources` reads each node's capacity,
:func:`check_worker_tracking` refuses MLflow stores that cannot work across hosts, and
:func:`probe` runs a zero-CPU task on every node that may host a worker (and the driver's)
to look at the storage, the shards, the checkout files rank 0 reads and the MLflow server
from there. A single-node cluster (this machine) skips the probe: the driver sees it all.

Capacity is what the nodes have, not what is free now: a run that fits waits for busy
resources as Ray decides.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

LOOPBACK_HOSTS = ("localhost", "ip6-localhost", "::1", "0.0.0.0")


class ClusterError(RuntimeError):
    """This cluster cannot run the configuration; the message names the key to set."""


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its id, address and capacity."""

    id: str
    ip: str
    cpus: float
    gpus: float

    @property
    def label(self) -> str:
        return f"{self.id[:8]} ({self.ip})"

    def fits(self, cpus: float, gpus: float) -> int:
        """How many bundles of ``cpus`` CPUs and ``gpus`` GPUs this node holds at once."""
        counts = [math.floor(have / need + 1e-9) for have, need in
                  ((self.cpus, cpus), (self.gpus, gpus)) if need > 0]
        return min(counts) if counts else 1_000_000


def alive_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster."""
    import ray

    return [Node(n["NodeID"], n["NodeManagerAddress"], n["Resources"].get("CPU", 0.0),
                 n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n["Alive"]]


# ----------------------------------------------------------------------------- resources


def check_resources(nodes: list[Node], bundles: int, cpus: float, gpus: float,
                    placement: str, keys: str, autoscale: bool = False) -> list[Node]:
    """Refuse a run whose ``bundles`` (workers or trials, each ``cpus`` CPUs and ``gpus``
    GPUs) cannot be placed with ``placement`` on these nodes; returns the nodes that can
    host one. ``keys`` names the params that ask for them, for the message. ``autoscale``
    (``runtime.autoscale``): the nodes up now are not the limit; the bundles are asked of
    Ray's autoscaler instead (a cluster that starts empty grows to hold them)."""
    hosts = [n for n in nodes if n.fits(cpus, gpus) > 0]
    if autoscale:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"CPU": cpus, **({"GPU": gpus} if gpus else {})}] * bundles)
        return hosts
    if placement == "STRICT_SPREAD":
        room = len(hosts)
    elif placement == "STRICT_PACK":
        room = max((n.fits(cpus, gpus) for n in nodes), default=0)
    else:
        room = sum(n.fits(cpus, gpus) for n in hosts)
    if room >= bundles:
        return hosts
    have = ", ".join(f"{n.label}: {n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes)
    need = f"{bundles} x ({cpus:g} CPU" + (f", {gpus:g} GPU)" if gpus else ")")
    if gpus and sum(n.gpus for n in nodes) < bundles * gpus:
        hint = (f"the cluster has {sum(n.gpus for n in nodes):g} GPUs in all: add GPU "
                "nodes, or lower the count (train.batch must stay divisible by "
                "runtime.workers x runtime.grad_accum)")
    elif placement.startswith("STRICT"):
        hint = (f"runtime.placement {placement} fits only {room}: choose PACK or SPREAD, or "
                "add nodes")
    else:
        hint = "lower the request or add nodes"
    raise ClusterError(f"{keys} asks for {need}, placed {placement}; the Ray cluster holds "
                       f"{room} ({have}): {hint}")


# ----------------------------------------------------------------------------- MLflow


def tracking_problem(uri: str) -> str | None:
    """Why ``uri`` cannot serve workers on several hosts, or None: a sqlite or file store
    is a file on one machine (sqlite over NFS is unsafe), a loopback address is every
    host's own."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or parsed.scheme.startswith("sqlite"):
        return "a store in a file on one machine (sqlite over NFS loses writes)"
    host = (parsed.hostname or "").lower()
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return "a loopback address: on every other host it names that host itself"
    return None


def check_worker_tracking(uri: str, nodes: list[Node]) -> None:
    """Refuse a sqlite, file or loopback MLflow URI when the worker nodes span several hosts
    (several addresses); nodes on one host share its files and its loopback."""
    hosts = sorted({n.ip for n in nodes})
    problem = tracking_problem(uri)
    if len(hosts) > 1 and problem:
        raise ClusterError(
            f"MLflow URI {uri} for the Ray workers is {problem}, and the workers may run on "
            f"{len(hosts)} hosts ({', '.join(hosts)}). Set tracking.worker_uri (or "
            "tracking.uri / $MLFLOW_TRACKING_URI) to an MLflow server every node reaches, "
            "e.g. http://<mlflow-host>:5000")


# ----------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class Look:
    """One thing every node must see, and the key that names it.

    ``kind``: ``marker`` (a file the driver wrote: same content), ``exists`` (a path),
    ``url`` (opened by webdataset, one byte read), ``mlflow`` (an http(s) server's health).
    """

    kind: str
    target: str
    key: str


def _look(looks: list[Look]) -> list[str]:
    """Run on a node: the looks that fail there, as messages."""
    failed = []
    for look in looks:
        try:
            _look_once(look)
        except Exception as err:  # whatever the opener raises: report it, keep looking
            failed.append(f"{look.key}: {look.target}: {type(err).__name__}: {err}")
    return failed


def _look_once(look: Look) -> None:
    if look.kind == "marker":
        from pipeline.storage import location

        target = location(look.target)
        if target.read_text() != target.name:
            raise ValueError("another file than the driver wrote (a different filesystem)")
    elif look.kind == "exists" and not Path(look.target).exists():
        raise FileNotFoundError("not there")
    elif look.kind == "url":
        import webdataset as wds

        with wds.gopen(look.target) as stream:
            stream.read(1)
    elif look.kind == "mlflow" and look.target.startswith(("http://", "https://")):
        import requests

        requests.get(look.target.rstrip("/") + "/health", timeout=10).raise_for_status()


def probe(nodes: list[Node], looks: list[Look], state: Any | None = None) -> None:
    """Look at ``looks`` from every node in ``nodes`` and the driver's; refuse naming each
    node and what it cannot see. ``state`` (a folder or StorePath): a marker file is
    written there first and must read back the same on every node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.storage import write_text

    marker = None
    if state is not None:
        marker = state / f".gat-probe-{uuid.uuid4().hex}"
        write_text(marker, marker.name)
        looks = [Look("marker", str(marker), "runtime.storage"), *looks]
    here = ray.get_runtime_context().get_node_id()
    ids = list(dict.fromkeys([*(n.id for n in nodes), here]))
    labels = {n.id: n.label for n in nodes}
    task = ray.remote(num_cpus=0, max_retries=0)(_look)
    try:
        answers = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(looks) for node in ids], timeout=120)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    problems = [f"  node {labels.get(node, node[:8])}: {msg}"
                for node, failed in zip(ids, answers) for msg in failed]
    if problems:
        raise ClusterError(
            "not every Ray node that may run this job sees what it needs:\n"
            + "\n".join(problems) + "\nrunning on several nodes needs: runtime.storage a "
            "folder every node mounts at the same path (or s3://bucket/prefix, gs://...); "
            "runtime.data_url a copy of data/shards/train and data/teacher every node reads "
            "(or the checkout at the same path on every node); tracking.worker_uri an MLflow "
            "server every node reaches")


def checkout_paths(paths: list[Path]) -> list[Look]:
    """Looks at files of the checkout that workers read (tokenizer, classifier, reference)."""
    return [Look("exists", str(p), f"checkout file {p.name} (the checkout at the same path on "
                 "every node, or runtime.sample_every: 0 and runtime.fd_every: 0)")
            for p in paths]


def data_looks(locations: list[str], manifest: str = "manifest.json") -> list[Look]:
    """Looks at the manifest of each shard location (a folder or URL)."""
    from pipeline.shards import is_url, shard_url

    return [Look("url" if is_url(loc) else "exists", shard_url(loc, manifest),
                 "runtime.data_url") for loc in locations]


def device(use_gpu: bool) -> str:
    """The device a stage computes on here: CUDA when there is one. Refuses a GPU study
    (``runtime.use_gpu: true``) on a machine without one, where it would crawl for weeks."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if use_gpu:
        raise ClusterError(
            "runtime.use_gpu is true (a GPU study), but this machine has no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run "
            "the stage on a GPU node (docker: `exec ray-worker`, not `ray-head`), or set "
            "runtime.use_gpu: false to compute on the CPU on purpose")
    return "cpu"
