"""What one training run needs, in one typed object: the job the driver hands each worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gat.train import model_lr
from pipeline.config import Params
from pipeline.identity import RunIdentity, run_identity, total_steps, uses_teacher
from pipeline.layout import LAYOUT, Layout
from pipeline.tracking import Tracker

DIVERGED = "diverged.json"  # in the run folder: written by the worker that hit the guard
LIVE_LOG = "log.csv"  # in the run folder: every logged row so far (resume, continuation)


@dataclass(frozen=True)
class TrainJob:
    """One size's training run: its params, identity, folders and tracking.

    ``session``: ``"train"`` for Ray Train workers, ``"tune"`` for a sweep trial that
    trains on its own as the only worker. ``debug`` is for tests (see ``worker``).
    """

    params: Params
    size: str
    seed: int  # the training seed (study.train_seeds): init, noise and data order
    identity: RunIdentity
    layout: Layout
    run_dir: Path  # the run's state: Ray checkpoints, the live log, diverged.json
    generator_dir: Path  # the EMA generator, written at the end
    results_dir: Path  # metrics.json and log.csv, written at the end
    use_teacher: bool
    tracker: Tracker | None = None
    mlflow_run: str | None = None
    continue_from: Path | None = None  # a shorter run's last checkpoint to start from
    session: Literal["train", "tune"] = "train"
    debug: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.identity.steps

    @property
    def lr(self) -> float:
        return model_lr(self.params.train, self.size)

    @property
    def micro_batch(self) -> int:
        """Samples per worker per forward: the global batch / (workers x accumulation)."""
        rt = self.params.runtime
        return self.params.train.batch // (self.workers * rt.grad_accum)

    @property
    def workers(self) -> int:
        return 1 if self.session == "tune" else self.params.runtime.workers


def make_job(params: Params, size: str, seed: int, layout: Layout = LAYOUT,
             out_dir: Path | None = None, **kw: Any) -> TrainJob:
    """The job for ``size`` and training seed ``seed``: Ray's storage under the layout;
    the outputs where the ``train`` stage puts them, or in ``out_dir`` (generator/,
    metrics.json, log.csv: a claim's variant)."""
    identity = run_identity(params, size, seed, layout)
    return TrainJob(params=params, size=size, seed=seed, identity=identity, layout=layout,
                    run_dir=layout.checkpoints(size) / identity.key,
                    generator_dir=(out_dir / "generator" if out_dir
                                   else layout.generator(size, seed)),
                    results_dir=out_dir or layout.train_results(size, seed),
                    use_teacher=uses_teacher(params, layout), **kw)


def derived(params: Params, size: str) -> dict[str, Any]:
    """What a run computes from params, for dry runs: lr, length, batch per worker."""
    rt = params.runtime
    return {"size": size, "lr": float(f"{model_lr(params.train, size):.6g}"),
            "steps": total_steps(params),
            "images_seen": total_steps(params) * params.train.batch,
            "batch_per_worker": params.train.batch // rt.workers,
            "micro_batch": params.train.batch // (rt.workers * rt.grad_accum)}
