"""The ``train`` stage's driver: one Ray Train ``TorchTrainer`` per run, resume, continue.

Ray's storage for a size is ``<workspace>/outputs/checkpoints/<size>/``, one folder per
run key (:mod:`pipeline.identity`), outside DVC's outputs (DVC deletes those before a
stage runs) and shared by every experiment of the workspace. Ray Train V2 restores a run
by name: the same command after a kill resumes from the last checkpoint; a finished run
re-emits its outputs without training. A run with a larger ``train.iterations`` (or kimg)
and otherwise the same key *continues* from the longest shorter run's last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from gat.train import NonFiniteError
from pipeline.config import Params
from pipeline.layout import LAYOUT, Layout
from pipeline.training.job import TrainJob, make_job
from pipeline.training.outputs import read_diverged
from pipeline.training.worker import train_loop

KEEP_CHECKPOINTS = 2  # Ray deletes older ones; the newest is what a rerun resumes from


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest checkpoint in a Ray run folder, if any."""
    found = [(json.loads(p.read_text())["step"], p.parent)
             for p in run_dir.glob("checkpoint_*/step.json")]
    return max(found) if found else None


def shorter_run(job: TrainJob) -> tuple[int, Path] | None:
    """The newest checkpoint of a shorter run with the same base key, to continue from."""
    best = None
    for run_dir in job.run_dir.parent.glob(f"{job.identity.base}-*"):
        steps = int(run_dir.name.rsplit("-", 1)[1])
        found = latest_checkpoint(run_dir) if steps < job.steps else None
        if found and (best is None or found[0] > best[0]):
            best = found
    return best


def training_config(job: TrainJob) -> dict[str, Any]:
    """MLflow params of a training run: its whole configuration, a function of the key."""
    params, ident = job.params, job.identity
    return {**{f"train.{k}": v for k, v in params.section("train").items()},
            "seed": job.seed, "size": job.size, "lr": job.lr, "steps": job.steps,
            "run_key": ident.key, "study_key": ident.study}


def prepare(params: Params, size: str, seed: int, layout: Layout = LAYOUT, track: bool = True,
            debug: dict[str, Any] | None = None, out_dir: Path | None = None) -> TrainJob:
    """The job for ``size``: identity, folders, continuation source, MLflow run.

    The MLflow store is checked here, before any Ray worker starts: an unreachable one
    stops the stage with the URI and how to set it.
    """
    from pipeline import tracking

    job = make_job(params, size, seed, layout, out_dir, debug=debug or {})
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "diverged.json").unlink(missing_ok=True)  # a rerun retries from the last
    parent = None if latest_checkpoint(job.run_dir) else shorter_run(job)
    if parent:
        job = replace(job, continue_from=parent[1])
    if not track:
        return job
    tr = tracking.tracker(params, layout)
    tr.check()
    tags = {"gat.continued_from": parent[1].parent.name} if parent else {}
    run_id = tracking.training_run(tr, params, size, job.identity.key, job.identity.study,
                                   training_config(job), {"gat.seed": str(seed), **tags})
    return replace(job, tracker=tr, mlflow_run=run_id)


def run_training(params: Params, size: str, seed: int | None = None, layout: Layout = LAYOUT,
                 track: bool = True, debug: dict[str, Any] | None = None,
                 out_dir: Path | None = None) -> dict[str, Any]:
    """Train ``size`` with training seed ``seed`` (default: the first of
    study.train_seeds) with a Ray TorchTrainer; returns its results' metrics.json.

    Raises ``NonFiniteError`` if training diverged (the last good checkpoint is kept).
    ``debug`` is for tests (see :meth:`Worker._debug_hooks`); ``out_dir`` puts the outputs
    there instead of the train stage's places (see :func:`make_job`).
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
    job = prepare(params, size, seed, layout, track, debug, out_dir)
    rt = params.runtime
    init_ray()
    how = (f"continuing from {job.continue_from.parent.name} step "
           f"{latest_checkpoint(job.continue_from.parent)[0]}; " if job.continue_from else "")
    print(f"training {size} seed {seed} (lr {job.lr:.4g}) for {job.steps} steps; {how}run "
          f"{job.run_dir}"
          f"{f', MLflow run {job.mlflow_run}' if job.mlflow_run else ''}. To resume after a "
          "kill, run the same command again.", flush=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=rt.workers, use_gpu=rt.use_gpu,
                                     resources_per_worker={"CPU": rt.cpus_per_worker}),
        run_config=RunConfig(
            name=job.identity.key, storage_path=str(job.run_dir.parent),
            failure_config=FailureConfig(max_failures=rt.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)),
    )
    try:
        trainer.fit()
    except TrainingFailedError:
        if not read_diverged(job.run_dir):  # a real failure, not the divergence guard
            _failed(job)
            raise
    diverged = read_diverged(job.run_dir)
    if diverged:
        _failed(job)
        raise NonFiniteError(f"{diverged['message']}; last good checkpoint kept in "
                             f"{job.run_dir}")
    return json.loads((job.results_dir / "metrics.json").read_text())


def _failed(job: TrainJob) -> None:
    if job.tracker:
        job.tracker.set_status(job.mlflow_run, "FAILED")
