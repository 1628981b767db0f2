"""What every training worker runs: build the library's trainer, resume, step to the end.

Each Ray Train worker (or one Tune trial, training on its own) runs :func:`train_loop` with
the driver's :class:`~pipeline.training.job.TrainJob`. Workers read their own share of the
shards (by path or URL, as the job says); :class:`gat.train.GATTrainer` averages gradients
across them. Every worker reports to Ray at the same steps (Ray's report is collective);
rank 0 attaches the checkpoint and owns the outputs
(:class:`~pipeline.training.outputs.RunOutputs`). A training run's last report carries the
final checkpoint with the run's outputs, which the driver takes from Ray's result.

The FD proxy (every ``runtime.fd_every`` steps) is computed by every worker on its own
device, each on its share of the samples (:func:`pipeline.evaluation.generator_fd`), after
the step's row is logged and its checkpoint reported: a proxy that fails or runs long loses
no training. Its value then joins the step's row and MLflow (:meth:`RunOutputs.log_fd`). A
sweep trial (one worker) instead puts it in the report that carries the checkpoint: ASHA
reads one proxy per report, and Tune refuses a report without it.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gat.flops import counted
from gat.models import conditioning_classes
from gat.train import GATTrainer, NonFiniteError
from pipeline.pretrained.teacher import Teacher, load_teacher
from pipeline.shards import make_train_loader
from pipeline.storage import StorePath
from pipeline.training.checkpoint import CHECKPOINT_PREFIX, load_state, local_copy, save_state
from pipeline.training.job import LIVE_LOG, TrainJob
from pipeline.training.outputs import RunOutputs, read_diverged, write_diverged


def train_loop(config: dict[str, Any]) -> None:
    """Ray's entry point: ``config = {"job": TrainJob}``."""
    Worker(config["job"]).run()


class Worker:
    """One worker of one run: its Ray session, rank, device, trainer and (rank 0) outputs."""

    def __init__(self, job: TrainJob):
        self.job, self.params = job, job.params
        if job.session == "tune":  # the trial is the only worker; Tune gave it its GPU
            from ray import tune

            self.session, self.rank, self.world = tune, 0, 1
            self.device = torch.device("cuda" if self.params.runtime.use_gpu else "cpu")
        else:
            import ray.train
            from ray.train.torch import get_device

            ctx = ray.train.get_context()
            self.session, self.rank, self.world = ray.train, ctx.get_world_rank(), \
                ctx.get_world_size()
            self.device = get_device() if self.params.runtime.use_gpu else torch.device("cpu")
        self.outputs: RunOutputs | None = None
        self.teacher: Teacher | None = None  # teacher.mode online: run in every step

    def run(self) -> None:
        job = self.job
        if read_diverged(job.run_dir):
            return  # Ray restarted the workers after the divergence guard stopped one: stop
        if "record_dir" in job.debug:
            self._record("node", _node_id(), append=True)  # per attempt: where it ran
        self.trainer = self._build(job.manifest)
        parent_log = self._restore()
        # Distinct, reproducible noise per worker and per resume point.
        torch.manual_seed(job.seed + 7919 * self.rank + 104729 * self.trainer.step_count)
        if self.rank == 0:
            self.outputs = RunOutputs(job, self.trainer, lambda: self.tokenizer, parent_log)
        done = self._steps(self._batches())
        if done is None:  # diverged
            return
        if "record_dir" in job.debug:
            checksum = sum(p.double().sum().item() for p in [
                *self.trainer.G.parameters(), *self.trainer.D.parameters(),
                self.trainer.G.w_avg])
            self._record("params", repr(checksum))
        if job.session == "train":  # a Tune trial's result is its reports
            self._finish(*done)

    def _build(self, manifest: dict[str, Any]) -> GATTrainer:
        """The library's trainer for the shards' latent shape [C, h, w] and classes (one
        class: an unconditional model)."""
        job, rt = self.job, self.params.runtime
        teacher_dim = 1
        if job.use_teacher:
            teacher_dim = job.teacher_manifest["token_shape"][-1]
        cfg = self.params.train if job.use_teacher else _without_repa(self.params.train)
        if job.online_teacher:  # the teacher stage's record of which teacher, at what size
            m = job.teacher_manifest
            self.teacher = load_teacher(m["teacher"], self.device, m["input_size"], job.layout,
                                        m.get("revision", ""))
        return GATTrainer(job.size, manifest["latent_shape"][0], manifest["latent_shape"][-1],
                          conditioning_classes(manifest["num_classes"]), teacher_dim, cfg,
                          self.device, seed=job.seed, grad_accum=rt.grad_accum,
                          grad_checkpointing=rt.grad_checkpointing,
                          d_name=self.params.train.d_size or None, precision=rt.precision,
                          compile_models=rt.compile, allreduce=rt.allreduce,
                          bucket_mb=rt.bucket_mb)

    def _restore(self) -> Path | StorePath | None:
        """Load Ray's latest checkpoint (a restart, or a rerun of the same command), else a
        shorter run's last one (a continuation: returns that run's live log)."""
        checkpoint = self.session.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as ckpt_dir:
                load_state(self.trainer, Path(ckpt_dir), self.device)
            how, parent_log = "resumed from checkpoint", None
        elif self.job.continue_from is not None:
            with local_copy(self.job.continue_from) as ckpt_dir:
                load_state(self.trainer, ckpt_dir, self.device)
            how, parent_log = "continued from", self.job.continue_from.parent / LIVE_LOG
        else:
            return None
        if self.rank == 0:
            print(f"[{self.job.size}] {how} step {self.trainer.step_count}", flush=True)
        return parent_log

    def _batches(self):
        job, rt = self.job, self.params.runtime
        loader = make_train_loader(
            job.shards, self.params.train.batch // self.world, self.rank, self.world,
            rt.loader_workers, job.seed + self.trainer.step_count,
            self.params.train.shuffle_buffer, job.teacher, with_keys="record_dir" in job.debug,
            manifest=job.manifest, teacher_manifest=job.teacher_manifest,
            teacher_format=(self.params.teacher.encoding, self.params.teacher.mirror),
            images=job.online_teacher)
        return iter(loader)

    def _online_tokens(self, batch: dict[str, Any]) -> list[float]:
        """teacher.mode online: the teacher's tokens of the batch's pixels (no grad) into
        batch["teacher"], [B, 1+n, T]; returns a one-item list that holds the seconds the
        teacher took once the step has run.

        With DiffAugment on, the trainer draws D's flips, so batch["teacher"] is a function
        the step calls with them: the teacher sees each image flipped as D does (the
        release's REPA targets), and its time is then also part of the step's."""
        spent, images, teacher = [0.0], batch.pop("images"), self.teacher

        def tokens(rows: slice = slice(None), flip: torch.Tensor | None = None) -> torch.Tensor:
            t0 = time.perf_counter()
            x = images[rows]
            if flip is not None:
                flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
                x = torch.where(flip, x.flip(-1), x)
            out = teacher.tokens(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            spent[0] += time.perf_counter() - t0
            return out

        batch["teacher"] = tokens if self.params.train.augment else tokens()
        return spent

    def _steps(self, loader) -> tuple[float, int] | None:
        """Steps from the trainer's counter to the end; (seconds, images) of this worker,
        or None when the divergence guard stopped the run (diverged.json written)."""
        job, trainer = self.job, self.trainer
        bar = tqdm(total=job.steps, initial=trainer.step_count, desc=job.size, unit="step",
                   disable=self.rank != 0, mininterval=10, dynamic_ncols=False, ascii=True)
        t_start, images = time.perf_counter(), 0
        count = self.outputs is not None and self.outputs.gflops_per_iteration() is None
        for step in range(trainer.step_count + 1, job.steps + 1):
            batch = next(loader)
            if job.debug:
                self._debug_hooks(batch, step)
            teacher_s = self._online_tokens(batch) if self.teacher else None
            t0 = time.perf_counter()
            inputs = (batch["latents"], batch["labels"], batch["teacher"])
            try:
                if count:  # rank 0's first step, counted: the run's compute per iteration
                    metrics, gflops = counted(trainer.step, *inputs)
                    self.outputs.record_gflops(gflops * self.world, step)
                    count = False
                else:
                    metrics = trainer.step(*inputs)
            except NonFiniteError as err:
                bar.close()
                self._diverged(err, step)
                return None
            dt = time.perf_counter() - t0
            images += batch["latents"].shape[0]
            metrics.update(step=step, kimg=step * self.params.train.batch / 1000,
                           step_time_s=dt, images_per_s=batch["latents"].shape[0] / dt)
            if teacher_s is not None:  # what the online teacher adds (augment: in step_time_s)
                metrics["teacher_time_s"] = teacher_s[0]
            self._after_step(metrics)
            bar.update()
        bar.close()
        return time.perf_counter() - t_start, images

    @functools.cached_property
    def tokenizer(self):
        """The shards' tokenizer (their manifest names it) on this worker's device, in
        :func:`~pipeline.pretrained.tokenizer.decode_dtype`: the proxy's and the grids'
        decoder."""
        from pipeline.pretrained.tokenizer import decode_dtype, load_tokenizer

        manifest = self.job.manifest
        return load_tokenizer(manifest.get("tokenizer", "train"), self.device,
                              manifest["scale_factor"], self.job.layout,
                              manifest.get("tokenizer_revision", ""), decode_dtype(self.device))

    def _after_step(self, metrics: dict[str, Any]) -> None:
        """Logging (rank 0), the Ray report with a checkpoint when due, then the FD proxy
        (see the module docstring). A training run's last step is reported by
        :meth:`_finish`, with the final outputs (and the proxy in its log)."""
        step, rt, out = metrics["step"], self.params.runtime, self.outputs
        last, tune = step == self.job.steps, self.job.session == "tune"
        # A Tune trial's every report must carry the metric ASHA reads, its last one too
        # when the length is not a multiple of the grace period.
        fd_now = rt.fd_every > 0 and (step % rt.fd_every == 0 or (tune and last))
        logged = step % rt.log_every == 0 or last or fd_now  # the same on every rank
        save = step % rt.checkpoint_every == 0 or last
        if fd_now and tune:  # one worker, no peer waits: the proxy rides in the report
            metrics["fd"] = self._fd(step)
        # A training run computes the proxy only for steps whose proxy is not logged yet
        # (a resumed run retrains some); rank 0 knows from its log and tells the others.
        fd_due = fd_now and not tune and self._agree(out is not None and out.fd_missing(step))
        if out and logged:
            out.log(metrics)
        # Ray's report is a barrier across the workers: a training run reports only with a
        # checkpoint (MLflow and the log have every row), a Tune trial every logged row
        # (its scheduler reads them). The last step's final checkpoint comes after its proxy
        # (it seals the log): when the proxy is due there, the state is reported first.
        to_ray = logged if tune else save or fd_due
        if to_ray and not (last and not tune and not fd_due):
            self._report(metrics, save or fd_due)
        if fd_due:
            _until_ray_took_the_report()
            t0 = time.perf_counter()
            fd = self._fd(step)
            if out:
                out.log_fd(step, fd, time.perf_counter() - t0)

    def _fd(self, step: int) -> float:
        """The FD proxy of the EMA generator: this worker's share, the same value on all."""
        from pipeline.evaluation import generator_fd

        debug = self.job.debug  # tests: the proxy raises at a step, on one rank or all
        if debug.get("fd_fail_at_step") == step and debug.get("fd_fail_rank",
                                                              self.rank) == self.rank:
            raise RuntimeError(f"fd_fail_at_step {step}: the FD proxy fails (a test)")
        return generator_fd(self.trainer.G_ema, self.tokenizer, self.params.runtime.fd_samples,
                            self.job.layout, self.rank, self.world)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank (a broadcast when there are peers)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def _finish(self, seconds: float, images: int) -> None:
        """The last report of a training run: rank 0's checkpoint holds the state and the
        run's outputs (generator, log, metrics); the others report the same step. It is
        uploaded before the call returns: the driver reads it from Ray's result."""
        if self.rank != 0:
            self.session.report({"step": float(self.job.steps)})
            return
        self.outputs.flush()
        with tempfile.TemporaryDirectory() as tmp:
            final = self.outputs.final(Path(tmp), seconds, images)
            save_state(self.trainer, Path(tmp))
            self._send(Path(tmp), {k: v for k, v in final.items()
                                   if isinstance(v, (int, float))}, "_final", wait=True)

    def _report(self, metrics: dict[str, Any], save: bool) -> None:
        """``report`` from every worker; rank 0 attaches a checkpoint when ``save``: its
        state is written here, and Ray uploads it to the run's storage while training goes
        on (a Tune trial's, before the call returns)."""
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if not (save and self.rank == 0):
            self.session.report(scalars)
            return
        tune_trial = self.job.session == "tune"
        # Ray Train deletes its folder once uploaded. A Tune trial's report never returns
        # when ASHA stops the trial there, so its folder is one per trial, in the trial's
        # directory, emptied before each report (the sweep removes what stopped trials left).
        folder = (trial_checkpoint(self.job.run_dir) if tune_trial
                  else Path(tempfile.mkdtemp(prefix="gat-ckpt-")))
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        save_state(self.trainer, folder)
        self._send(folder, scalars, "", wait=tune_trial)
        if tune_trial:
            shutil.rmtree(folder, ignore_errors=True)

    def _send(self, folder: Path, scalars: dict[str, float], suffix: str, wait: bool) -> None:
        """Report a sealed checkpoint folder, named by its step (``latest`` orders by step,
        then name: a step's ``_final`` after its state). ``wait``: uploaded before
        returning; else Ray uploads it in a thread and then deletes ``folder``."""
        checkpoint = self.session.Checkpoint.from_directory(folder)
        if self.job.session == "tune":  # tune.report takes no upload options
            self.session.report(scalars, checkpoint=checkpoint)
            return
        mode = self.session.CheckpointUploadMode
        name = f"{CHECKPOINT_PREFIX}{self.trainer.step_count:08d}{suffix}"
        self.session.report(scalars, checkpoint=checkpoint, checkpoint_dir_name=name,
                            checkpoint_upload_mode=mode.SYNC if wait else mode.ASYNC)

    def _diverged(self, err: NonFiniteError, step: int) -> None:
        """Record the divergence; this worker then stops, and so does every peer at the
        same step (the trainer all-reduces the finite flag), so the run ends without a
        restart. The worker where it began writes diverged.json; the driver turns it into
        ``NonFiniteError``."""
        print(f"[rank {self.rank}] {err}", flush=True)
        if err.here:
            write_diverged(self.job.run_dir, str(err), step, self.rank)

    def _debug_hooks(self, batch: dict, step: int) -> None:
        """Tests: ``record_dir`` (sample keys, node ids and a G/D checksum per worker),
        ``nan_at_step`` (D outputs NaN from that step, on every rank or only on
        ``nan_rank``), ``hold_at_step`` (``hold_rank`` stops before that step, once per
        record_dir, until its node is killed). ``fd_fail_at_step`` (the FD proxy raises
        there, on every rank or only on ``fd_fail_rank``) is checked in :meth:`_fd`."""
        debug = self.job.debug
        if "record_dir" in debug:
            self._record("keys", "".join(f"{step} {key}\n" for key in batch["keys"]), True)
        if debug.get("nan_at_step") == step and debug.get("nan_rank", self.rank) == self.rank:
            self.trainer.D.register_forward_hook(
                lambda m, i, out: (out[0] * float("nan"), out[1]) if isinstance(out, tuple)
                else out * float("nan"))
        held = Path(debug.get("record_dir", ".")) / "held"
        if (debug.get("hold_at_step") == step and debug.get("hold_rank", 0) == self.rank
                and not held.exists()):
            held.write_text(f"{step}\n")
            time.sleep(600)  # the test kills this node meanwhile

    def _record(self, kind: str, text: str, append: bool = False) -> None:
        """Tests: ``<record_dir>/<kind>_rank<r>.txt``, appended or replaced."""
        if "record_dir" in self.job.debug:
            path = Path(self.job.debug["record_dir"]) / f"{kind}_rank{self.rank}.txt"
            with open(path, "a" if append else "w") as f:
                f.write(text if not append or text.endswith("\n") else text + "\n")


def trial_checkpoint(run_dir: Path | StorePath) -> Path:
    """Where a Tune trial writes the checkpoint of its current report: in its run folder,
    or, where that is remote storage, a folder of the local temp dir named after it."""
    if isinstance(run_dir, Path):
        return run_dir / "report-checkpoint"
    name = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"gat-trial-ckpt-{name}"


def _until_ray_took_the_report(limit_s: float = 600.0) -> None:
    """Wait until Ray Train has processed this worker's reports, the last one's checkpoint
    committed to storage (``ray.train.get_all_reported_checkpoints``, COMMITTED): a proxy
    that fails after this leaves that checkpoint registered, the one Ray resumes from; one
    that failed sooner could lose it."""
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=limit_s)


def _node_id() -> str:
    """The Ray node this process runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _without_repa(cfg):
    """The same hyperparameters with REPA off (no teacher tokens to align with)."""
    import dataclasses

    return dataclasses.replace(cfg, repa_weight=0.0)
