"""What one training run needs, in one typed object: the job the driver hands each worker.

The driver reads everything a worker would otherwise read from the checkout (the shard
manifests) and resolves every place a worker reads or writes (the run's storage, the shard
locations), so a worker on another node needs no files of the driver's machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gat.train import model_lr
from pipeline.cluster import ClusterError
from pipeline.config import Params
from pipeline.identity import RunIdentity, run_identity, teacher_data, total_steps
from pipeline.layout import LAYOUT, Layout
from pipeline.shards import ShardError, read_manifest, read_manifest_at
from pipeline.storage import StorePath
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
    run_dir: Path | StorePath  # the run's state (runtime.storage): Ray checkpoints, the live
    #                            log, diverged.json; every node reads and writes it
    generator_dir: Path  # the EMA generator, written by the driver at the end
    results_dir: Path  # metrics.json and log.csv, written by the driver at the end
    use_teacher: bool
    shards: str  # where workers read the latent shards (folder or URL, runtime.data_url)
    manifest: dict[str, Any]  # the latent shards' manifest (as read by the driver)
    teacher: str | None = None  # where workers read cached teacher tokens, when REPA is on
    teacher_manifest: dict[str, Any] | None = None  # data/teacher's, when REPA is on
    tracker: Tracker | None = None  # the workers' MLflow store (tracking.worker_uri)
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
    def online_teacher(self) -> bool:
        """REPA with teacher.mode online: workers run the teacher on the shards' pixels."""
        return bool(self.teacher_manifest) and self.teacher_manifest.get("mode") == "online"

    @property
    def workers(self) -> int:
        return 1 if self.session == "tune" else self.params.runtime.workers


def make_job(params: Params, size: str, seed: int, layout: Layout = LAYOUT,
             out_dir: Path | None = None, **kw: Any) -> TrainJob:
    """The job for ``size`` and training seed ``seed``: Ray's storage (runtime.storage),
    the shards the workers read; the outputs where the ``train`` stage puts them, or in
    ``out_dir`` (generator/, metrics.json, log.csv: a claim's variant)."""
    identity = run_identity(params, size, seed, layout)
    teacher = teacher_data(params, layout)  # refuses teacher data that does not fit params
    return TrainJob(params=params, size=size, seed=seed, identity=identity, layout=layout,
                    run_dir=layout.checkpoints(size, params.runtime.storage) / identity.key,
                    generator_dir=(out_dir / "generator" if out_dir
                                   else layout.generator(size, seed)),
                    results_dir=out_dir or layout.train_results(size, seed),
                    use_teacher=teacher is not None,
                    **worker_data(params, layout, teacher), **kw)


def worker_data(params: Params, layout: Layout, teacher_manifest: dict[str, Any] | None
                ) -> dict[str, Any]:
    """Where workers read the shards (and cached teacher tokens) and their manifests.

    The checkout's data/ by default; with runtime.data_url, its copy there, refused before
    any work unless it lists the very shards of data/ (same names, same sha256).
    """
    shards, teacher = layout.worker_data(params.runtime.data_url)
    out: dict[str, Any] = {"shards": shards, "manifest": read_manifest(layout.shards),
                           "teacher_manifest": teacher_manifest}
    cached = teacher_manifest is not None and params.teacher.mode == "cached"
    if cached:
        out["teacher"] = teacher
    if params.runtime.data_url:
        _same_shards(shards, out["manifest"], layout.shards)
        if cached:
            _same_shards(teacher, out["teacher_manifest"], layout.teacher_tokens)
    return out


def _same_shards(location: str, manifest: dict[str, Any], local: Path) -> None:
    """Refuse a runtime.data_url copy that is missing or differs from the local shards."""
    try:
        copy = read_manifest_at(location)
    except ShardError as err:
        raise ClusterError(f"runtime.data_url: {err}") from None
    want = [(s["name"], s["sha256"]) for s in manifest["shards"]]
    have = [(s["name"], s["sha256"]) for s in copy["shards"]]
    if have != want:
        differ = [w[0] for w, h in zip(want, have) if w != h]
        what = (f"{differ[0]} differs" if differ
                else f"{len(have)} shards there, {len(want)} here")
        raise ClusterError(
            f"runtime.data_url: the shards at {location} are not those of {local} ({what}); "
            f"copy the folder there again (e.g. `rsync -a {local}/ <dest>/`, `aws s3 sync`)")


def derived(params: Params, size: str) -> dict[str, Any]:
    """What a run computes from params, for dry runs: lr, length, batch per worker."""
    rt = params.runtime
    return {"size": size, "lr": float(f"{model_lr(params.train, size):.6g}"),
            "steps": total_steps(params),
            "images_seen": total_steps(params) * params.train.batch,
            "batch_per_worker": params.train.batch // rt.workers,
            "micro_batch": params.train.batch // (rt.workers * rt.grad_accum)}
