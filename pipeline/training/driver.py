"""The ``train`` stage's driver: one Ray Train ``TorchTrainer`` per run, resume, continue.

Ray's storage for a size is ``<state>/checkpoints/<size>/``, one folder per run key
(:mod:`pipeline.identity`); ``<state>`` is ``runtime.storage`` (a folder every node mounts,
or ``s3://...``), else the workspace's ``outputs/``: outside DVC's outputs (DVC deletes
those before a stage runs) and shared by every experiment of the workspace. Ray Train V2
restores a run by name: the same command after a kill (of the driver, or of a node: then
within the run, under ``runtime.max_failures``) resumes from the last checkpoint; a
finished run re-emits its outputs without training. A run with a larger
``train.iterations`` (or kimg) and otherwise the same key *continues* from the longest
shorter run's last complete checkpoint.

Before any worker starts, the cluster is checked (:mod:`pipeline.cluster`): its GPUs and
CPUs, and, on several nodes, that every node sees the storage, the shards and the MLflow
server its workers use. The run's outputs come back through Ray's ``Result`` (the final
checkpoint), not through files rank 0 wrote on its own node.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from gat.train import NonFiniteError
from pipeline import cluster
from pipeline.config import Params
from pipeline.layout import LAYOUT, Layout
from pipeline.storage import StorePath
from pipeline.tracking import Tracker
from pipeline.training.checkpoint import latest, local_copy
from pipeline.training.job import TrainJob, make_job
from pipeline.training.outputs import FINAL, publish, read_diverged
from pipeline.training.worker import train_loop

KEEP_CHECKPOINTS = 2  # Ray deletes older ones; the newest is what a rerun resumes from


def shorter_run(job: TrainJob) -> tuple[int, Path | StorePath] | None:
    """The newest complete checkpoint of a shorter run with the same base key."""
    best = None
    for run_dir in job.run_dir.parent.glob(f"{job.identity.base}-*"):
        steps = int(run_dir.name.rsplit("-", 1)[1])
        found = latest(run_dir) if steps < job.steps else None
        if found and (best is None or found[0] > best[0]):
            best = found
    return best


def training_config(job: TrainJob) -> dict[str, Any]:
    """MLflow params of a training run: its whole configuration, a function of the key."""
    params, ident = job.params, job.identity
    return {**{f"train.{k}": v for k, v in params.section("train").items()},
            "seed": job.seed, "size": job.size, "lr": job.lr, "steps": job.steps,
            "run_key": ident.key, "study_key": ident.study}


def plan(params: Params, size: str, seed: int, layout: Layout = LAYOUT, track: bool = True,
         debug: dict[str, Any] | None = None, out_dir: Path | None = None
         ) -> tuple[TrainJob, Tracker | None]:
    """The job for ``size`` and the driver's MLflow store, without touching anything: the
    job carries the workers' store (``tracking.worker_uri``). The driver's store is checked
    here: an unreachable one stops the stage with the URI and how to set it. ``out_dir``:
    see :func:`make_job`."""
    from pipeline import tracking

    job = make_job(params, size, seed, layout, out_dir, debug=debug or {})
    if not track:
        return job, None
    tr = tracking.tracker(params, layout)
    tr.check()
    workers = tracking.worker_tracker(params, tr)
    if workers.uri != tr.uri:
        workers.check()  # from here; check_cluster looks from every other node too
    return replace(job, tracker=workers), tr


def prepare(job: TrainJob, tr: Tracker | None) -> TrainJob:
    """The run's folder, its continuation source and its MLflow run (found or created)."""
    from pipeline import tracking

    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "diverged.json").unlink(missing_ok=True)  # a rerun retries from the last
    parent = None if latest(job.run_dir) else shorter_run(job)
    if parent:
        job = replace(job, continue_from=parent[1])
    if tr is None:
        return job
    tags = {"gat.continued_from": parent[1].parent.name} if parent else {}
    run_id = tracking.training_run(tr, job.params, job.size, job.identity.key,
                                   job.identity.study, training_config(job),
                                   {"gat.seed": str(job.seed), **tags})
    return replace(job, mlflow_run=run_id)


def worker_reads(job: TrainJob) -> list[Path]:
    """Folders of the checkout that workers read (rank 0's grids: the tokenizer; the FD
    proxy, on every worker: the tokenizer, the reference statistics and the classifier),
    those this machine has."""
    layout = job.layout
    wanted = [layout.tokenizer] if job.tracker else []
    if job.params.runtime.fd_every > 0:
        wanted += [layout.tokenizer, layout.reference, layout.classifier]
    return [p for p in dict.fromkeys(wanted) if p.exists()]


def check_proxy(job: TrainJob) -> None:
    """Refuse, before any work, a run whose FD proxy (runtime.fd_every > 0) has no
    reference statistics to measure against: it would fail at its first proxy step."""
    from pipeline.fidelity import reference_path

    every, path = job.params.runtime.fd_every, reference_path(job.layout)
    if every > 0 and not path.exists():
        raise FileNotFoundError(f"{path}: missing, and runtime.fd_every is {every} (the FD "
                                "proxy reads it): run the `reference` stage first (dvc repro "
                                "reference), or set runtime.fd_every: 0")


def finished_checkpoint(job: TrainJob) -> Path | StorePath | None:
    """The final checkpoint of a run that trained all its steps before (it holds the run's
    outputs), else None: publishing it needs no Ray workers."""
    found = latest(job.run_dir)
    if found and found[0] >= job.steps and (found[1] / FINAL).exists():
        return found[1]
    return None


def check_cluster(job: TrainJob) -> None:
    """Refuse a run this Ray cluster cannot hold, or (on several nodes) whose storage,
    shards or MLflow server some node cannot reach; see :mod:`pipeline.cluster`."""
    rt = job.params.runtime
    nodes = cluster.alive_nodes()
    hosts = cluster.check_resources(
        nodes, rt.workers, rt.cpus_per_worker, 1.0 if rt.use_gpu else 0.0, rt.placement,
        "runtime.workers x (runtime.cpus_per_worker, runtime.use_gpu)", rt.autoscale)
    if len(nodes) < 2:
        return  # the driver's own node: it sees what the driver sees
    looks = cluster.data_looks([job.shards, *([job.teacher] if job.teacher else [])])
    looks += cluster.checkout_paths(worker_reads(job))
    if job.tracker:
        cluster.check_worker_tracking(job.tracker.uri, hosts)
        looks.append(cluster.Look("mlflow", job.tracker.uri, "tracking.worker_uri"))
    cluster.probe(hosts, looks, state=job.run_dir.parent)


def torch_config(params: Params):
    """Ray Train's torch.distributed set-up: ``runtime.collective_timeout_s`` is how long a
    worker waits in a collective (the gradient all-reduce, the FD proxy's reduce) for the
    slowest peer before the group fails. It must exceed the longest time one worker spends
    apart from the others: rank 0's checkpoint write (Ray uploads it in a thread), sample
    grid and MLflow calls, and the spread of the workers' shares of the FD proxy (docs:
    runtime.collective_timeout_s)."""
    from ray.train.torch import TorchConfig

    return TorchConfig(timeout_s=params.runtime.collective_timeout_s)


def run_training(params: Params, size: str, seed: int | None = None, layout: Layout = LAYOUT,
                 track: bool = True, debug: dict[str, Any] | None = None,
                 out_dir: Path | None = None) -> dict[str, Any]:
    """Train ``size`` with training seed ``seed`` (default: the first of
    study.train_seeds) with a Ray TorchTrainer; returns its results' metrics.json.

    Raises ``NonFiniteError`` if training diverged (the last good checkpoint is kept), and
    ``ClusterError`` / ``TrackingError`` before any work when the cluster or the MLflow
    store cannot serve the run. ``debug`` is for tests (see :meth:`Worker._debug_hooks`).
    ``out_dir`` puts the outputs there instead of the train stage's places (see
    :func:`make_job`).
    """
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    from pipeline.ray_utils import init_ray

    seed = params.study.train_seeds[0] if seed is None else seed
    job, tr = plan(params, size, seed, layout, track, debug, out_dir)
    done = finished_checkpoint(job)
    if done is not None:  # trained before (an earlier repro, the ladder, another claim)
        job = prepare(job, tr)
        print(f"{size} seed {seed}: run {job.run_dir} trained its {job.steps} steps before; "
              "publishing its outputs, training nothing", flush=True)
        with local_copy(done) as final:
            return publish(job, final, tr)
    rt = params.runtime
    check_proxy(job)
    init_ray()
    check_cluster(job)  # refuse before any work
    job = prepare(job, tr)
    how = (f"continuing from {job.continue_from.parent.name} step "
           f"{latest(job.continue_from.parent)[0]}; " if job.continue_from else "")
    print(f"training {size} seed {seed} (lr {job.lr:.4g}) for {job.steps} steps; {how}run "
          f"{job.run_dir}"
          f"{f', MLflow run {job.mlflow_run}' if job.mlflow_run else ''}. To resume after a "
          "kill, run the same command again.", flush=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        torch_config=torch_config(params),
        scaling_config=ScalingConfig(num_workers=rt.workers, use_gpu=rt.use_gpu,
                                     resources_per_worker={"CPU": rt.cpus_per_worker},
                                     placement_strategy=rt.placement),
        run_config=RunConfig(
            name=job.identity.key, storage_path=str(job.run_dir.parent),
            failure_config=FailureConfig(max_failures=rt.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError:
        if not read_diverged(job.run_dir):  # a real failure, not the divergence guard
            _failed(job, tr)
            raise
        result = None
    diverged = read_diverged(job.run_dir)
    if diverged:
        _failed(job, tr)
        raise NonFiniteError(f"{diverged['message']}; last good checkpoint kept in "
                             f"{job.run_dir}")
    with result.checkpoint.as_directory() as final:  # downloaded when the storage is remote
        return publish(job, Path(final), tr)


def _failed(job: TrainJob, tr: Tracker | None) -> None:
    if tr and job.mlflow_run:
        tr.set_status(job.mlflow_run, "FAILED")
