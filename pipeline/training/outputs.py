"""A run's outputs: rank 0 logs while it trains, and seals the final ones into the last
checkpoint; the driver writes them where DVC expects them.

While training, rank 0 keeps the live log (in the run folder, on the run's storage: CSV +
MLflow, each step exactly once), logs sample grids and the FD proxy (which every worker
computes its share of, after the step's checkpoint: :meth:`RunOutputs.log_fd` adds it to
the step's row). At the end it puts
the EMA generator, the whole log and the run's metrics into the final checkpoint
(:meth:`RunOutputs.final`). The driver takes them from the ``Result`` Ray returns
(:func:`publish`): ``outputs/train/.../generator``, ``results/train/.../{metrics.json,
log.csv}`` are written on the driver's machine, wherever rank 0 ran.

Exactly once: every logged row goes to the run folder's ``log.csv`` first, then to
MLflow. A resumed run (after a kill, or a continuation of a shorter run) first sends MLflow
the rows it lacks, then logs only steps after the last row: steps retrained after a
resume are not logged twice, and none is missing. The FD proxy of a step reaches its row
(and MLflow) after the row itself: a resumed run sends MLflow the proxies it lacks too.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gat.io import save_generator
from gat.train import GATTrainer
from pipeline.files import atomic_path, write_json
from pipeline.storage import StorePath, write_text
from pipeline.tracking import Tracker
from pipeline.training.checkpoint import verify
from pipeline.training.job import DIVERGED, LIVE_LOG, TrainJob

LOG_FIELDS = ["step", "kimg", "loss_d", "loss_g", "d_adv", "r1", "r2", "repa", "logit_real",
              "logit_fake", "logit_gap", "grad_norm_d", "grad_norm_g", "images_per_s",
              "step_time_s", "fd"]
PROGRESS = ("loss_d", "loss_g", "logit_gap", "repa", "images_per_s")
FLOPS_FILE = "flops.json"  # in the run folder: one iteration's counted GFLOPs
FINAL = "final.json"  # the run's metrics, in the final checkpoint


def read_log(path: Path | StorePath, until: int | None = None) -> list[dict[str, str]]:
    if not path.exists():
        return []
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [r for r in rows if until is None or int(r["step"]) <= until]


def _write_log(path: Path | StorePath, rows: list[dict[str, Any]]) -> None:
    """The whole log, published at once (a rename, or one upload to an object store)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)}


class RunOutputs:
    """Rank 0's outputs of one training run (see the module docstring)."""

    def __init__(self, job: TrainJob, trainer: GATTrainer, tokenizer: Callable[[], Any],
                 parent_log: Path | StorePath | None = None):
        """``tokenizer``: gives the decoder of the shards' latents (loaded on first use)."""
        self.job, self.trainer, self.manifest = job, trainer, job.manifest
        self.tokenizer = tokenizer
        self.log_path = job.run_dir / LIVE_LOG
        self.tr, self.run_id = job.tracker, job.mlflow_run
        if not self.log_path.exists() and parent_log is not None:
            # A continuation: the shorter run's history up to the checkpoint it starts from.
            _write_log(self.log_path, read_log(parent_log, until=trainer.step_count))
        rows = self.rows = read_log(self.log_path)
        self.last_logged = max((int(r["step"]) for r in rows), default=0)
        if self.tr:
            self.tr.set_status(self.run_id, "RUNNING")
            self.tr.set_tags(self.run_id, {f"runtime.{k}": v for k, v in
                                           job.params.to_dict()["runtime"].items()})
            sent = self.tr.last_step(self.run_id, "loss_d")
            sent_fd = self.tr.last_step(self.run_id, "fd")
            for row in rows:  # what MLflow lacks: a continuation's history, or a kill's race
                step = int(row["step"])
                if step > sent:
                    self.tr.log_metrics(self.run_id, _numbers(row), step)
                elif step > sent_fd and row.get("fd") not in ("", None):
                    self.tr.log_metrics(self.run_id, {"fd": float(row["fd"])}, step)

    def gflops_per_iteration(self) -> float | None:
        """The counted training GFLOPs of one iteration (all workers), once recorded."""
        path = self.job.run_dir / FLOPS_FILE
        return json.loads(path.read_text())["gflops_per_iteration"] if path.exists() else None

    def record_gflops(self, gflops: float, step: int) -> None:
        """Store one iteration's counted GFLOPs (G and D forward and backward, the K MNG
        levels, the aGP copies, the REPA head; no VAE: a step never decodes)."""
        write_text(self.job.run_dir / FLOPS_FILE, json.dumps({
            "gflops_per_iteration": gflops, "counted_at_step": step,
            "workers": self.job.workers, "batch": self.job.params.train.batch}))

    def due(self, step: int) -> bool:
        """Whether ``step`` is still to be logged (not logged by an earlier attempt)."""
        return step > self.last_logged

    def log(self, metrics: dict[str, Any]) -> None:
        """One row: live CSV, MLflow (and a sample grid when due), a progress line."""
        step = int(metrics["step"])
        if not self.due(step):
            return
        self.rows.append({k: metrics.get(k, "") for k in LOG_FIELDS})
        _write_log(self.log_path, self.rows)  # whole: the storage may be an object store
        self.last_logged = step
        print(f"[{self.job.size}] step {step}/{self.job.steps} " + " ".join(
            f"{k} {metrics[k]:.4g}" for k in PROGRESS if k in metrics), flush=True)
        if self.tr:
            # Not waited for: a training step does not stall on the store (flush at the end;
            # rows a kill loses are sent again on resume, from the log, above).
            self.tr.log_metrics(self.run_id, {k: v for k, v in metrics.items() if k != "step"},
                                step, wait=False)
            every = self.job.params.runtime.sample_every
            if (every and step % every == 0) or step == self.job.steps:
                self.log_grid(step, self.job.params.runtime.sample_seeds)

    def flush(self) -> None:
        """Every queued MLflow metric stored (the run's end: the driver reads them next)."""
        if self.tr:
            self.tr.flush()

    def log_grid(self, step: int, per_class: int) -> None:
        """A uint8 grid to MLflow: one row per class (up to 10), fixed seeds."""
        from torchvision.utils import make_grid

        classes = min(10, self.manifest["num_classes"])
        z = torch.randn(classes * per_class, 64, generator=torch.Generator().manual_seed(0))
        c = torch.arange(classes).repeat_interleave(per_class)
        g = self.trainer.G_ema
        device = next(g.parameters()).device
        latents = g.sample(z.to(device), c.to(device)).float().cpu()
        grid = make_grid(self.tokenizer().decode(latents), nrow=per_class, padding=1)
        self.tr.client.log_image(self.run_id, grid.permute(1, 2, 0).numpy(),
                                 f"samples/step_{step:07d}.png")

    def fd_missing(self, step: int) -> bool:
        """Whether ``step``'s FD proxy is still to be logged: its row is not there yet, or
        an earlier attempt logged the row but failed before its proxy."""
        row = next((r for r in self.rows if int(r["step"]) == step), None)
        return row is None or row.get("fd") in ("", None)

    def log_fd(self, step: int, fd: float, seconds: float) -> None:
        """The FD proxy of ``step``, computed after its row was logged (and its checkpoint
        reported): into that row of the live CSV, to MLflow at ``step`` with the seconds it
        took (``fd_proxy_s``: not in the CSV, a timing), a progress line."""
        row = next(r for r in self.rows if int(r["step"]) == step)
        row["fd"] = fd
        _write_log(self.log_path, self.rows)
        print(f"[{self.job.size}] step {step}/{self.job.steps} fd {fd:.4g} ({seconds:.1f} s)",
              flush=True)
        if self.tr:
            self.tr.log_metrics(self.run_id, {"fd": fd, "fd_proxy_s": seconds}, step)

    def final(self, folder: Path, seconds: float, images: int) -> dict[str, Any]:
        """Put the run's outputs into ``folder`` (the final checkpoint): the EMA generator
        (``generator/``), the whole log (``log.csv``) and its metrics (``final.json``,
        returned).

        ``seconds``/``images``: this worker's loop in this process. When a rerun found the
        run complete (nothing left to train), the rate is the mean of the logged rates.
        """
        job, rows = self.job, self.rows
        ident = job.identity
        meta = {"name": job.size, "d_name": job.params.train.d_size or job.size,
                "mng": job.params.train.mng,
                "seed": job.seed, "lr": self.trainer.lr, "steps": job.steps,
                "teacher_dim": self.trainer.D.repa[-1].out_features,
                "scale_factor": self.manifest["scale_factor"],
                "tokenizer": self.manifest.get("tokenizer", "train"),
                "tokenizer_revision": self.manifest.get("tokenizer_revision", ""),
                "run_key": ident.key, "study_key": ident.study}
        save_generator(folder / "generator", self.trainer.G_ema, meta)
        rates = [float(r["images_per_s"]) for r in rows if r.get("images_per_s")]
        rate = images / seconds if images else (sum(rates) / len(rates) if rates else 0.0)
        final = {"size": job.size, "seed": job.seed, "steps": job.steps, "lr": self.trainer.lr,
                 "images_per_s_per_worker": rate,  # rank 0, loader and logging included
                 "images_per_s": rate * job.workers, "workers": job.workers,
                 "wall_s": seconds,
                 "steps_this_run": images // (job.params.train.batch // job.workers),
                 "kimg": job.steps * job.params.train.batch / 1000,
                 "run_key": ident.key, "study_key": ident.study,
                 "mlflow_run_id": self.run_id or ""}
        per_iteration = self.gflops_per_iteration()
        if per_iteration is not None:  # the compute axis of the paper's Fig. 21
            final.update(train_gflops_per_iter=per_iteration,
                         train_gflops_total=per_iteration * job.steps)
        final.update({f"final_{k}": float(v) for k, v in rows[-1].items()
                      if v not in ("", None) and k not in ("step", "kimg", "fd")} if rows else {})
        _write_log(folder / "log.csv", rows)
        (folder / FINAL).write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")
        return final


def publish(job: TrainJob, checkpoint: Path, tracker: Tracker | None = None) -> dict[str, Any]:
    """The driver's half: the final checkpoint's outputs (a local copy, seal verified) to
    ``outputs/train/.../generator`` and ``results/train/.../{metrics.json,log.csv}``,
    atomically; with ``tracker`` (the driver's MLflow store), the final rates, the
    generator as an artifact (once per run), and the run FINISHED. Returns the run's
    metrics."""
    verify(checkpoint)
    final = json.loads((checkpoint / FINAL).read_text())
    with atomic_path(job.generator_dir) as tmp:
        shutil.copytree(checkpoint / "generator", tmp)
    job.results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(job.results_dir / "log.csv") as tmp:
        shutil.copyfile(checkpoint / "log.csv", tmp)
    write_json(job.results_dir / "metrics.json", final)
    if tracker and job.mlflow_run:
        if tracker.last_step(job.mlflow_run, "train_wall_s") < job.steps:  # once per run
            tracker.log_metrics(job.mlflow_run, {
                "train_images_per_s": final["images_per_s"],
                "train_images_per_s_per_worker": final["images_per_s_per_worker"],
                "train_wall_s": final["wall_s"],
                "train_gflops_per_iter": final.get("train_gflops_per_iter", 0.0)}, job.steps)
            tracker.log_artifacts(job.mlflow_run, job.generator_dir, "generator")
        tracker.set_status(job.mlflow_run, "FINISHED")
    return final


def write_diverged(run_dir: Path | StorePath, message: str, step: int, rank: int) -> None:
    """Record a divergence (first worker wins): the driver turns it into an error."""
    path = run_dir / DIVERGED
    if not path.exists():
        write_text(path, json.dumps({"message": message, "step": step, "rank": rank}))


def read_diverged(run_dir: Path | StorePath) -> dict[str, Any] | None:
    path = run_dir / DIVERGED
    return json.loads(path.read_text()) if path.exists() else None
