"""A real multi-node Ray cluster on one machine, for tests: separate raylets, each with its
own resources and temp dir, all bound to 127.0.0.1.

``ray start`` rewrites 127.0.0.1 to the machine's outward address, so the nodes are
started the way ``ray.cluster_utils.Cluster`` does (the same processes ``ray start``
runs). A driver joins through ``$RAY_ADDRESS``; it keeps the loopback address only with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` set before Ray is imported (tests/conftest.py),
which makes Ray take 127.0.0.1 as this machine's address. On real hosts the same cluster
is ``ray start --head`` and ``ray start --address=<head>:6379`` (README).

    python -m tests.multinode --address 127.0.0.1:PORT --temp-dir DIR

joins one more node from a process of its own: the tests start it under
``unshare --mount`` with a tmpfs over a folder, so that node does not see what the others
see there, as a node on another machine would not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
# Notice a dead node within ~3 s (Ray's default: ~30 s), so a run restarts quickly.
FAST_FAILURE = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def node_args(temp_dir: Path, cpus: int = 1) -> dict:
    """A worker node's settings: its own temp dir, ``cpus`` CPUs, no GPU, loopback."""
    return {"node_ip_address": LOOPBACK, "num_cpus": cpus, "num_gpus": 0,
            "temp_dir": str(temp_dir), "object_store_memory": 150 * 1024 * 1024}


class LocalCluster:
    """A head without CPUs (it runs the driver, nothing else) and ``workers`` nodes with
    ``cpus`` CPUs each. Sets ``$RAY_ADDRESS`` (every node inherits it: Ray's own clients
    inside it then find this cluster, not another one on the machine)."""

    def __init__(self, workers: int = 3, cpus: int = 1):
        from ray.cluster_utils import Cluster

        # Short: Ray's unix sockets live under it (108 characters at most).
        self.base = Path(tempfile.mkdtemp(prefix="gat-ray-", dir="/tmp"))
        port = free_port()
        self.address = f"{LOOPBACK}:{port}"
        self._saved = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = self.address
        self.cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
            **node_args(self.base / "head", 0), "gcs_server_port": port,
            "include_dashboard": True, "dashboard_host": LOOPBACK, "dashboard_port": 0,
            "_system_config": FAST_FAILURE})
        self.cpus, self.joined = cpus, []
        for _ in range(workers):
            self.add()

    def add(self):
        """One more worker node (a node that joins, or rejoins after a kill)."""
        node = self.cluster.add_node(**node_args(self.base / f"n{len(self.joined)}",
                                                 self.cpus))
        self.joined.append(node)
        return node

    def kill(self, node_id: str) -> None:
        """SIGKILL every process of one node (raylet, object store, its workers)."""
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()
        if self._saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = self._saved
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def node_without(address: str, hidden: Path, temp_dir: Path):
    """One more node that sees an empty tmpfs at ``hidden`` (its own mount namespace);
    yields its Popen, then kills the node's processes. Needs ``unshare`` and the right to
    mount (root)."""
    hidden.mkdir(parents=True, exist_ok=True)
    command = (f"mount -t tmpfs tmpfs {hidden} && exec {sys.executable} -m tests.multinode "
               f"--address {address} --temp-dir {temp_dir}")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             command], cwd=Path(__file__).resolve().parent.parent,
                            start_new_session=True)
    try:
        yield proc
    finally:
        kill_tree(proc.pid)
        proc.wait()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (by pid: only what this test started)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.3)


def alive_count() -> int:
    import ray

    return sum(n["Alive"] for n in ray.nodes())


class Killer(threading.Thread):
    """Kills the node ``node_id()`` names once ``ready()`` holds (a run meanwhile blocks in
    the main thread); ``error`` keeps what went wrong, for the test to raise."""

    def __init__(self, cluster: LocalCluster, ready: Callable[[], bool],
                 node_id: Callable[[], str], timeout: float = 300):
        super().__init__(daemon=True)
        self.cluster, self.ready, self.node_id, self.timeout = cluster, ready, node_id, timeout
        self.killed: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            wait_for(self.ready, self.timeout, "the run to reach the kill point")
            self.killed = self.node_id()
            self.cluster.kill(self.killed)
        except BaseException as err:  # handed to the test thread
            self.error = err


def main() -> None:
    """Join ``--address`` as a worker node with 1 CPU; block until killed."""
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()
    params = RayParams(**node_args(Path(args.temp_dir)), gcs_address=args.address,
                       include_log_monitor=False, node_manager_port=0, min_worker_port=0,
                       max_worker_port=0)
    params.dashboard_agent_listen_port = None  # a free port, not the head's
    Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
