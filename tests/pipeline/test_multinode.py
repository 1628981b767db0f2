"""A real multi-node Ray cluster on this machine (tests/multinode.py): a head without CPUs
and three 1-CPU nodes, separate raylets, one cluster for the whole module.

- refused before any work: fewer GPUs than asked, storage a node does not see, a shards
  URL that does not exist (an MLflow store that cannot span hosts: tests/pipeline/
  test_cluster.py, as this machine is one host);
- the loader reading shards by URL (``file://``, ``pipe:cat``) on two nodes x two loader
  workers, every sample exactly once per epoch;
- ``train`` with 2 workers forced onto different nodes, checkpoints on shared storage, the
  node of one worker killed mid-run: the run resumes from the last checkpoint on the
  surviving nodes, every step logged once, the outputs returned through Ray's result;
- a sweep trial whose node is killed resumes from its checkpoint on another node.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cluster import ClusterError
from pipeline.layout import Layout
from pipeline.training import make_job, run_training
from tests.helpers import fd_root, tiny_params
from tests.multinode import Killer, LocalCluster, alive_count, node_without, wait_for

pytestmark = pytest.mark.slow

SIZE = "GAT-T1/4"


@pytest.fixture(scope="module")
def nodes():
    """The cluster, and this process joined to it as the driver (on the head)."""
    import ray

    from pipeline.ray_utils import init_ray

    local_before = ray.is_initialized()
    ray.shutdown()
    cluster = LocalCluster(workers=3)
    try:
        init_ray()  # joins $RAY_ADDRESS
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if local_before:  # the session's local cluster (conftest's ray_cluster)
            init_ray(num_cpus=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fd_root(tmp_path_factory.mktemp("root"))


def _params(tmp: Path, root: Path, mlflow_uri: str, **overrides):
    """2 workers, one per node, checkpoints on ``tmp/shared``, shards read by file:// URL."""
    return tiny_params(tmp, mlflow_uri, **{
        "workers": 2, "placement": "STRICT_SPREAD", "cpus_per_worker": 1.0, "batch": 16,
        "iterations": 16, "log_every": 4, "checkpoint_every": 4, "sample_every": 0,
        "fd_every": 0, "loader_workers": 0, "shuffle_buffer": 1, "max_failures": 2,
        "storage": str(tmp / "shared"), "data_url": f"file://{root}/data", **overrides})


# ----------------------------------------------------------------------------- refused


def test_fewer_gpus_than_asked_refused_before_any_work(nodes, root, tmp_path, mlflow_uri):
    params = _params(tmp_path, root, mlflow_uri, use_gpu=True)
    with pytest.raises(ClusterError, match=r"2 x \(1 CPU, 1 GPU\).*0 GPUs in all"):
        run_training(params, SIZE, 0, Layout(root, root))
    assert not (tmp_path / "shared").exists()  # no run folder, no checkpoint
    client = MlflowClient(mlflow_uri)  # the store was checked, and no run made in it
    assert not client.search_runs([client.get_experiment_by_name("gat-tiny").experiment_id])


def test_storage_one_node_cannot_see_refused(nodes, root, tmp_path, mlflow_uri):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) and the right to mount")
    hidden = tmp_path / "only-some-nodes"
    before = alive_count()
    with node_without(nodes.address, hidden, nodes.base / "hidden"):
        wait_for(lambda: alive_count() == before + 1, 120, "the fourth node to join")
        params = _params(tmp_path, root, mlflow_uri, storage=str(hidden))
        with pytest.raises(ClusterError, match=r"(?s)node .*runtime.storage: .*only-some-nodes"
                                               r".*FileNotFoundError.*folder every node mounts"):
            run_training(params, SIZE, 0, Layout(root, root), track=False)
    wait_for(lambda: alive_count() == before, 60, "the fourth node to leave")


def test_missing_shards_url_refused(root, tmp_path, mlflow_uri):
    for url in (f"file://{tmp_path}/nowhere", f"pipe:cat {tmp_path}/nowhere/{{path}}"):
        params = _params(tmp_path, root, mlflow_uri, data_url=url)
        with pytest.raises(ClusterError, match=r"runtime.data_url: .*nowhere/shards/train/"
                                               r"manifest.json: cannot read"):
            make_job(params, SIZE, 0, Layout(root, root))


# ----------------------------------------------------------------------------- loader


def _keys(location: str, rank: int) -> list[str]:
    from pipeline.shards import make_train_loader

    loader = make_train_loader(location, 16, rank=rank, world_size=2, num_workers=2,
                               epochs=1, with_keys=True, shuffle_buffer=20)
    return [k for batch in loader for k in batch["keys"]]


def test_loader_by_url_exactly_once_across_nodes_x_workers(nodes, root):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    shards = root / "data" / "shards" / "train"  # 256 samples in 8 shards
    workers = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")][:2]
    task = ray.remote(num_cpus=1)(_keys)
    for url in (f"file://{shards}", f"pipe:cat {shards}/{{path}}"):
        per_rank = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(url, rank) for rank, node in enumerate(workers)])
        assert not set(per_rank[0]) & set(per_rank[1]), url
        assert sorted(per_rank[0] + per_rank[1]) == [f"{j:09d}" for j in range(256)], url


# ----------------------------------------------------------------------------- node killed


def _first_nodes(record: Path, rank: int) -> list[str]:
    return (record / f"node_rank{rank}.txt").read_text().split()


def test_train_two_nodes_resumes_after_a_node_is_killed(nodes, root, tmp_path, mlflow_uri):
    """Rank 1 stops before step 6 (a checkpoint at step 4 registered), its node is killed;
    Ray restarts the pair on the two nodes left, from step 4."""
    params = _params(tmp_path, root, mlflow_uri)
    record = tmp_path / "record"
    record.mkdir()
    shared = tmp_path / "shared"
    snapshot = "checkpoints/GAT-T1/4/*/checkpoint_manager_snapshot.json"
    killer = Killer(nodes, lambda: (record / "held").exists() and bool(list(
        shared.glob(snapshot))), lambda: _first_nodes(record, 1)[0])
    killer.start()
    layout = Layout(root, root)
    metrics = run_training(params, SIZE, 0, layout, debug={
        "record_dir": str(record), "hold_at_step": 6, "hold_rank": 1})
    killer.join(5)
    assert killer.error is None and killer.killed, killer.error
    first = [_first_nodes(record, r)[0] for r in (0, 1)]
    second = [_first_nodes(record, r)[-1] for r in (0, 1)]
    assert first[0] != first[1] and second[0] != second[1]  # one worker per node
    assert killer.killed == first[1] and killer.killed not in second
    assert metrics["steps"] == 16 and metrics["steps_this_run"] == 12  # resumed at step 4
    # The outputs came back through Ray's result; the checkpoints live on the storage.
    assert (layout.generator(SIZE, 0) / "generator.pt").exists()
    run_dir = make_job(params, SIZE, 0, layout).run_dir
    assert run_dir == shared / "checkpoints" / "GAT-T1/4" / metrics["run_key"]
    assert not (root / "outputs" / "checkpoints").exists()
    log = pd.read_csv(layout.train_results(SIZE, 0) / "log.csv")
    assert list(log["step"]) == [4, 8, 12, 16]  # each step once, across the kill
    history = MlflowClient(mlflow_uri).get_metric_history(metrics["mlflow_run_id"], "loss_d")
    assert sorted(m.step for m in history) == [4, 8, 12, 16]


def test_sweep_trial_resumes_on_another_node_after_its_node_is_killed(nodes, root, tmp_path,
                                                                      mlflow_uri):
    from pipeline.sweep import run_sweep

    params = _params(tmp_path, root, mlflow_uri, trial_cpus=1.0, max_failures=1)
    params = dataclasses.replace(params, sweep=dataclasses.replace(
        params.sweep, iterations=12, grace_period=4))
    record = tmp_path / "record"
    record.mkdir()
    shared = tmp_path / "shared"
    killer = Killer(nodes, lambda: (record / "held").exists() and bool(list(
        shared.glob("tune/*/*/checkpoint_*/step.json"))), lambda: _first_nodes(record, 0)[0])
    killer.start()
    uris = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    table = run_sweep(params, SIZE, lrs=[2e-3], scheduler=False, layout=Layout(root, root),
                      debug={"record_dir": str(record), "hold_at_step": 6, "hold_rank": 0})
    # Tune's MLflow callback set the process's URIs to the sweep's store; they are back
    assert (os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()) == uris
    killer.join(5)
    assert killer.error is None and killer.killed, killer.error
    nodes_seen = _first_nodes(record, 0)
    assert nodes_seen[0] == killer.killed and nodes_seen[-1] != killer.killed
    (row,) = table.to_dict("records")
    assert not row["error"] and not row["stopped_early"] and row["reports"] == 3, row
    assert list(shared.glob("tune/lr_sweep-*"))  # Tune's experiment on the storage
    nodes.add()  # a node rejoins: the cluster is whole again
