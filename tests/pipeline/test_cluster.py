"""What the cluster checks refuse, on node lists (the probe and the refusals on a real
multi-node cluster: tests/pipeline/test_multinode.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.cluster import (
    ClusterError,
    Node,
    check_resources,
    check_worker_tracking,
    device,
    tracking_problem,
)
from tests.helpers import REPO

GPU_HOSTS = [Node("a" * 56, "10.0.0.1", 16, 2), Node("b" * 56, "10.0.0.2", 16, 2)]


def test_gpus_and_placement():
    assert check_resources(GPU_HOSTS, 4, 8, 1, "PACK", "k") == GPU_HOSTS
    check_resources(GPU_HOSTS, 2, 8, 1, "STRICT_SPREAD", "k")
    with pytest.raises(ClusterError, match=r"k asks for 8 x \(8 CPU, 1 GPU\).*holds 4 .*"
                                           r"4 GPUs in all: add GPU nodes"):
        check_resources(GPU_HOSTS, 8, 8, 1, "PACK", "k")
    with pytest.raises(ClusterError, match=r"STRICT_SPREAD fits only 2: choose PACK"):
        check_resources(GPU_HOSTS, 3, 1, 0, "STRICT_SPREAD", "k")
    with pytest.raises(ClusterError, match=r"STRICT_PACK fits only 2"):
        check_resources(GPU_HOSTS, 4, 8, 1, "STRICT_PACK", "k")
    with pytest.raises(ClusterError, match=r"asks for 3 x \(12 CPU\).*holds 2"):
        check_resources(GPU_HOSTS, 3, 12, 0, "SPREAD", "k")


def test_mlflow_store_that_cannot_span_hosts_refused():
    one_host = [Node("a" * 56, "127.0.0.1", 1, 0), Node("b" * 56, "127.0.0.1", 1, 0)]
    for uri in ("sqlite:////nfs/mlflow.db", "/nfs/mlruns", "http://127.0.0.1:5000",
                "http://localhost:5000", "file:///nfs/mlruns"):
        assert tracking_problem(uri), uri
        with pytest.raises(ClusterError,
                           match=r"2 hosts \(10.0.0.1, 10.0.0.2\)\. Set tracking.worker_uri"):
            check_worker_tracking(uri, GPU_HOSTS)
        check_worker_tracking(uri, one_host)  # one machine: its files, its loopback
    check_worker_tracking("http://mlflow.internal:5000", GPU_HOSTS)


def test_gpu_study_refuses_a_machine_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert device(False) == "cpu"
    with pytest.raises(ClusterError, match=r"runtime.use_gpu is true .* no CUDA device.*"
                                           r"`exec ray-worker`, not `ray-head`"):
        device(True)


def test_autoscaling_cluster_is_asked_not_refused(ray_cluster):
    """runtime.autoscale: a run the nodes up now cannot hold (here 4 GPU workers on this
    GPU-less 2-CPU Ray) is asked of Ray's autoscaler instead of refused before any work."""
    from ray.autoscaler.sdk import request_resources

    from pipeline.cluster import alive_nodes

    nodes = alive_nodes()
    with pytest.raises(ClusterError, match=r"4 x \(8 CPU, 1 GPU\)"):
        check_resources(nodes, 4, 8, 1, "PACK", "k")
    assert check_resources(nodes, 4, 8, 1, "PACK", "k", autoscale=True) == []
    assert check_resources(nodes, 1, 1, 0, "PACK", "k", autoscale=True) == nodes
    request_resources(bundles=[])  # the session's cluster asks for nothing again


def test_local_ray_is_on_loopback(ray_cluster):
    """init_ray's own Ray (the session's) has 127.0.0.1 as its node's address and its GCS's,
    with no private ray.init argument: Ray's RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set by
    ``pipeline`` before Ray is imported."""
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_dashboard_on_loopback_unless_switched_off():
    """A stage's own Ray has its dashboard on 127.0.0.1 by default; GAT_RAY_DASHBOARD=0
    (the suite's setting, tests/conftest.py) starts none."""
    code = ("import os, ray\n"
            "from pipeline.ray_utils import init_ray\n"
            "for flag in ('1', '0'):\n"
            "    os.environ['GAT_RAY_DASHBOARD'] = flag\n"
            "    print(repr(init_ray(num_cpus=1).dashboard_url))\n"
            "    ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    on, off = out.stdout.split()[-2:]
    assert on.startswith("'127.0.0.1:") and off in ("''", "None")
