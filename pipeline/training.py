"""Training one model size with Ray Train: the code behind the `train` stage and the sweep.

Each Ray worker builds a :class:`gat.train.GATTrainer` (which averages gradients across
workers), reads its own share of the shards, and runs the library's step. Rank 0 writes
checkpoints through Ray Train, logs to MLflow and writes the outputs. Checkpoints live in
``outputs/checkpoints/<run name>``, outside DVC's outputs (DVC deletes those before a
stage runs): the run name hashes every input that shapes training, so rerunning the same
command after a kill resumes, while a changed param starts afresh.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gat.io import save_generator
from gat.models import model_config
from gat.optim import width_aware_lr
from gat.train import GATTrainer, NonFiniteError, TrainConfig
from pipeline.files import atomic_path, write_json
from pipeline.params import REPO_ROOT, Params, parse_params
from pipeline.shards import TEACHER_TOKENS, TRAIN_SHARDS, read_manifest

CHECKPOINTS = "outputs/checkpoints"
STATE_FILE = "state.pt"
DIVERGED = "diverged.json"  # written by the worker that hit the guard: message and step
KEEP_CHECKPOINTS = 2  # Ray deletes older ones; the newest is what a rerun resumes from
LOG_FIELDS = ["step", "kimg", "loss_d", "loss_g", "d_adv", "r1", "r2", "repa", "logit_real",
              "logit_fake", "logit_gap", "grad_norm_d", "grad_norm_g", "images_per_s",
              "step_time_s", "fd"]


def size_slug(size: str) -> str:
    """File-system name of a model size: ``GAT-T1/4`` -> ``GAT-T1_4``."""
    return size.replace("/", "_")


def total_steps(params: Params) -> int:
    """Training length in steps: train.kimg (thousands of images) if set, else iterations."""
    if params.train.kimg > 0:
        return math.ceil(params.train.kimg * 1000 / params.train.batch)
    return params.train.iterations


def adapted_lr(params: Params, size: str) -> float:
    return width_aware_lr(params.train.lr_base, params.train.c_base, model_config(size).width)


def train_config(params: Params, use_teacher: bool) -> TrainConfig:
    """The library's TrainConfig from the train params (same names; REPA off without teacher)."""
    shared = {f.name: getattr(params.train, f.name) for f in dataclasses.fields(TrainConfig)
              if hasattr(params.train, f.name)}
    if not use_teacher:
        shared["repa_weight"] = 0.0
    return TrainConfig(**shared)


def code_digest() -> str:
    """sha256 over the model library's sources (gat/*.py): what one training step computes."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parents[1] / "gat").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def run_name(params: Params, size: str, root: Path = REPO_ROOT) -> str:
    """``<slug>-<hash>``: the hash covers the train params, the seed, the shards and gat/.

    The same command after a kill finds the same name and resumes; a changed param, new
    shards or changed model code (when DVC reruns the stage for it) start afresh.
    """
    manifest = read_manifest(root / TRAIN_SHARDS)
    key = json.dumps({"train": params.to_dict()["train"], "seed": params.study.seed,
                      "size": size, "shards": [s["sha256"] for s in manifest["shards"]],
                      "code": code_digest()}, sort_keys=True)
    return f"{size_slug(size)}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


# ----------------------------------------------------------------------------- driver


def loop_config(params: Params, size: str, out_dir: Path, track: bool = True,
                debug: dict[str, Any] | None = None, root: Path = REPO_ROOT,
                session: str = "train") -> dict[str, Any]:
    """What every worker's loop (:func:`train_loop`) reads: params, paths, tracking, debug.

    ``session``: ``"train"`` (Ray Train workers) or ``"tune"`` (one sweep trial training on
    its own): which Ray API the loop reports metrics and checkpoints through.
    """
    from pipeline import tracking

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DIVERGED).unlink(missing_ok=True)
    teacher = root / TEACHER_TOKENS
    use_teacher = params.train.repa_weight > 0 and (teacher / "manifest.json").exists()
    return {
        "params": params.to_dict(), "size": size, "out_dir": str(out_dir),
        "shards": str(root / TRAIN_SHARDS), "teacher": str(teacher) if use_teacher else None,
        "run_id": tracking.size_run_id(params, size) if track else None,
        "tracking_uri": tracking.tracking_uri(params) if track else None,
        "debug": debug or {}, "session": session,
    }


def run_training(params: Params, size: str, out_dir: Path, track: bool = True,
                 debug: dict[str, Any] | None = None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Train ``size`` with a Ray TorchTrainer; write generator/, metrics.json, log.csv.

    Returns the final metrics. Raises ``NonFiniteError`` if training diverged (the last
    good checkpoint is kept). ``debug`` is for tests: ``{"record_dir": path}`` makes every
    worker write the sample keys it consumed and a checksum of its G and D;
    ``{"nan_at_step": n}`` makes D output NaN from step n (fault injection), on every worker
    or, with ``"nan_rank": r``, only on rank r (its peers then wait in the all-reduce).
    ``root`` holds data/ (shards, teacher tokens) and outputs/checkpoints/.
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

    init_ray()
    config = loop_config(params, size, out_dir, track, debug, root)
    out_dir = Path(config["out_dir"])
    name, checkpoints = run_name(params, size, root), root / CHECKPOINTS
    print(f"training {size} (lr {adapted_lr(params, size):.4g}) for {total_steps(params)} steps;"
          f" checkpoints in {checkpoints / name}. To resume after a kill, run the same "
          "command again.")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=params.train.workers, use_gpu=params.train.use_gpu,
            resources_per_worker={"CPU": params.train.cpus_per_worker}),
        run_config=RunConfig(
            name=name, storage_path=str(checkpoints),
            failure_config=FailureConfig(max_failures=params.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)),
    )
    diverged = out_dir / DIVERGED
    try:
        trainer.fit()
    except TrainingFailedError:
        if not diverged.exists():  # a real failure, not the divergence guard
            raise
    if diverged.exists():
        raise NonFiniteError(json.loads(diverged.read_text())["message"] +
                             f"; last good checkpoint kept in {checkpoints / name}")
    return json.loads((out_dir / "metrics.json").read_text())


# ----------------------------------------------------------------------------- workers


def _worker_context(config: dict[str, Any], use_gpu: bool):
    """(Ray module the loop reports through, rank, world size, device) of this worker.

    ``ray.train`` in a TorchTrainer's workers; ``ray.tune`` in a sweep trial that trains on
    its own as the only worker (same report/checkpoint calls; Tune gave it its GPU).
    """
    if config.get("session") == "tune":
        from ray import tune

        return tune, 0, 1, torch.device("cuda" if use_gpu else "cpu")
    import ray.train
    from ray.train.torch import get_device

    ctx = ray.train.get_context()
    device = get_device() if use_gpu else torch.device("cpu")
    return ray.train, ctx.get_world_rank(), ctx.get_world_size(), device


def train_loop(config: dict[str, Any]) -> None:
    """One worker: build the trainer, resume, run the library's step until the end.

    Runs in each Ray Train worker, or as the whole of a sweep trial (``session: tune``,
    one worker). ``config`` comes from :func:`loop_config`.
    """
    params = parse_params(config["params"], check_paths=False)
    session, rank, world, device = _worker_context(config, params.train.use_gpu)
    if (Path(config["out_dir"]) / DIVERGED).exists():
        return  # Ray restarted the workers after the divergence guard stopped one: stop
    trainer, manifest = _build_trainer(config, params, device)
    _restore(trainer, config["size"], rank, device, session)
    # Distinct, reproducible noise per worker and per resume point.
    torch.manual_seed(params.study.seed + 7919 * rank + 104729 * trainer.step_count)
    logger = _Rank0Logger(config, params, trainer, manifest) if rank == 0 else None
    debug = config["debug"]
    loader = _batches(config, params, rank, world, trainer.step_count, "record_dir" in debug)
    done = _run_steps(config, params, trainer, loader, rank, world, logger, session)
    if done is None:  # diverged
        return
    if "record_dir" in debug:
        checksum = sum(p.double().sum().item() for p in
                       [*trainer.G.parameters(), *trainer.D.parameters(), trainer.G.w_avg])
        (Path(debug["record_dir"]) / f"params_rank{rank}.txt").write_text(repr(checksum))
    if logger:
        logger.finish(*done)


def _build_trainer(config: dict, params: Params, device: torch.device
                   ) -> tuple[GATTrainer, dict[str, Any]]:
    """The library's trainer for the shards' latent shape [C, h, w] and classes."""
    manifest = read_manifest(config["shards"])
    channels, latent_size = manifest["latent_shape"][0], manifest["latent_shape"][-1]
    teacher_dim = 1
    if config["teacher"]:
        teacher_dim = read_manifest(config["teacher"])["token_shape"][-1]
    trainer = GATTrainer(config["size"], channels, latent_size, manifest["num_classes"],
                         teacher_dim, train_config(params, config["teacher"] is not None),
                         device, seed=params.study.seed)
    return trainer, manifest


def _restore(trainer: GATTrainer, size: str, rank: int, device: torch.device, session) -> None:
    """Load Ray's latest checkpoint (after a restart or a rerun of the same command)."""
    checkpoint = session.get_checkpoint()
    if not checkpoint:
        return
    with checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / STATE_FILE, map_location=device, weights_only=True)
    trainer.load_state_dict(state)
    if rank == 0:
        print(f"[{size}] resumed from checkpoint at step {trainer.step_count}", flush=True)


def _run_steps(config: dict, params: Params, trainer: GATTrainer, loader, rank: int,
               world: int, logger: _Rank0Logger | None, session) -> tuple[float, int] | None:
    """Steps from the trainer's step counter to the end; returns (seconds, images) of this
    worker, or None when the divergence guard stopped the run (diverged.json written)."""
    steps, debug = total_steps(params), config["debug"]
    bar = tqdm(total=steps, initial=trainer.step_count, desc=config["size"], unit="step",
               disable=rank != 0, mininterval=10, dynamic_ncols=False, ascii=True)
    t_start, images = time.perf_counter(), 0
    for step in range(trainer.step_count + 1, steps + 1):
        batch = next(loader)
        if debug:
            _debug_hooks(debug, trainer, batch, rank, step)
        t0 = time.perf_counter()
        try:
            metrics = trainer.step(batch["latents"], batch["labels"], batch["teacher"])
        except NonFiniteError as err:
            bar.close()
            _diverged(Path(config["out_dir"]), err, step, rank, world)
            return None
        dt = time.perf_counter() - t0
        images += batch["latents"].shape[0]
        metrics.update(step=step, kimg=step * params.train.batch / 1000, step_time_s=dt,
                       images_per_s=batch["latents"].shape[0] / dt)
        _after_step(params, trainer, metrics, rank, logger, steps, session)
        bar.update()
    bar.close()
    return time.perf_counter() - t_start, images


class WorkerDiverged(RuntimeError):
    """Raised by a worker whose guard fired while others may wait in an all-reduce."""


def _diverged(out_dir: Path, err: NonFiniteError, step: int, rank: int, world: int) -> None:
    """Record the divergence (first worker wins) and stop this worker.

    Alone, the worker just returns. With peers, it raises: a peer whose own loss was finite
    waits in the gradient all-reduce for this one, so Ray must tear the group down; a
    restarted group finds diverged.json and stops at once (see ``train_loop``), and the
    driver turns the failure into ``NonFiniteError``.
    """
    print(f"[rank {rank}] {err}", flush=True)
    if not (out_dir / DIVERGED).exists():
        write_json(out_dir / DIVERGED, {"message": str(err), "step": step, "rank": rank})
    if world > 1:
        raise WorkerDiverged(f"rank {rank}: {err}") from err


def _after_step(params: Params, trainer: GATTrainer, metrics: dict, rank: int,
                logger: _Rank0Logger | None, steps: int, session) -> None:
    """FD proxy, logging (rank 0) and the Ray report with a checkpoint when due."""
    step, every = metrics["step"], params.train
    report_now = step % every.log_every == 0 or step == steps
    save_now = step % every.checkpoint_every == 0 or step == steps
    fd_now = every.fd_every > 0 and step % every.fd_every == 0
    if fd_now and logger:
        metrics["fd"] = logger.fd()  # rank 0's report carries it (what Tune's ASHA reads)
    report_now = report_now or fd_now  # every rank reports the same number of times
    if logger:
        logger.log(step, metrics, report_now, steps)
    if report_now or save_now:
        _report(trainer, metrics, rank, save_now, session)


def _debug_hooks(debug: dict, trainer: GATTrainer, batch: dict, rank: int, step: int) -> None:
    if "record_dir" in debug:
        with open(Path(debug["record_dir"]) / f"keys_rank{rank}.txt", "a") as f:
            f.write("".join(f"{step} {key}\n" for key in batch["keys"]))
    if debug.get("nan_at_step") == step and debug.get("nan_rank", rank) == rank:
        trainer.D.register_forward_hook(
            lambda m, i, out: (out[0] * float("nan"), out[1]) if isinstance(out, tuple)
            else out * float("nan"))


def _batches(config: dict, params: Params, rank: int, world: int, seed: int,
             with_keys: bool = False):
    from pipeline.shards import make_train_loader

    per_worker = params.train.batch // world
    loader = make_train_loader(config["shards"], per_worker, rank, world,
                               params.train.loader_workers, params.study.seed + seed,
                               params.train.shuffle_buffer, config["teacher"],
                               with_keys=with_keys)
    return iter(loader)


def _report(trainer: GATTrainer, metrics: dict, rank: int, save: bool, session) -> None:
    """``report`` from every worker; rank 0 attaches the checkpoint when ``save``.

    A checkpoint directory holds state.pt (tensors only: G, D, EMA, both optimizers, w
    averages as G's buffer, step, RNG; loaded with ``weights_only=True``) and step.json.
    """
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    if not (save and rank == 0):
        session.report(scalars)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(trainer.state_dict(), Path(tmp) / STATE_FILE)
        (Path(tmp) / "step.json").write_text(json.dumps({"step": trainer.step_count}))
        session.report(scalars, checkpoint=session.Checkpoint.from_directory(tmp))


class _Rank0Logger:
    """MLflow, per-step CSV, sample grids, FD proxy and final outputs: rank 0 only."""

    def __init__(self, config: dict, params: Params, trainer: GATTrainer, manifest: dict):
        self.params, self.trainer, self.manifest = params, trainer, manifest
        self.out_dir, self.size = Path(config["out_dir"]), config["size"]
        self.run_id, self.uri = config["run_id"], config["tracking_uri"]
        self.log_path = self.out_dir / "log.csv"
        self._keep_log_until(trainer.step_count)
        self._tokenizer = None
        self._fd_eval = None
        if self.run_id:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):
                if trainer.step_count == 0:
                    flat = _flatten({"train": params.to_dict()["train"], "size": self.size,
                                     "lr": trainer.lr, "steps": total_steps(params),
                                     "workers": params.train.workers})
                    mlflow.log_params(flat)

    def _keep_log_until(self, step: int) -> None:
        """On resume, drop log rows written after the checkpoint we resumed from."""
        if not self.log_path.exists():
            return
        with open(self.log_path) as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with atomic_path(self.log_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, metrics: dict, report: bool, steps: int) -> None:
        if not report:
            return
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: metrics.get(k, "") for k in LOG_FIELDS})
        print(f"[{self.size}] step {step}/{steps} " + " ".join(
            f"{k} {metrics[k]:.4g}" for k in ("loss_d", "loss_g", "logit_gap", "repa",
                                               "images_per_s") if k in metrics), flush=True)
        if self.run_id:
            import mlflow

            with mlflow.start_run(run_id=self.run_id):
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                                    if isinstance(v, (int, float)) and k != "step"}, step=step)
                every = self.params.train.sample_every
                if every and (step % every == 0 or step == steps):
                    mlflow.log_image(self.sample_grid(), f"samples/step_{step:07d}.png")

    def tokenizer(self):
        if self._tokenizer is None:
            from pipeline.pretrained import load_tokenizer

            self._tokenizer = load_tokenizer(self.params.tokenizer.source,
                                             scale_factor=self.manifest["scale_factor"])
        return self._tokenizer

    def sample_grid(self, per_class: int = 8) -> Any:
        """uint8 HWC grid: one row per class (up to 10 classes), fixed seeds."""
        from torchvision.utils import make_grid

        classes = min(10, self.manifest["num_classes"])
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(classes * per_class, 64, generator=gen)
        c = torch.arange(classes).repeat_interleave(per_class)
        g = self.trainer.G_ema
        device = next(g.parameters()).device
        latents = g.sample(z.to(device), c.to(device)).float().cpu()
        images = self.tokenizer().decode(latents)
        return make_grid(images, nrow=per_class, padding=1).permute(1, 2, 0).numpy()

    def fd(self) -> float:
        """FD proxy of the EMA generator: FD-classifier offline, FID with Inception."""
        from pipeline.fidelity import generator_fd

        return generator_fd(self.params, self.trainer.G_ema, self.tokenizer(),
                            self.params.train.fd_samples)

    def finish(self, seconds: float, images: int) -> None:
        """Write generator/ (EMA G) and metrics.json; log the generator to MLflow.

        ``seconds``/``images``: this worker's training loop in this process. When a rerun
        found the run already complete (nothing left to train), the rate is the mean of the
        per-step rates in log.csv instead.
        """
        steps = total_steps(self.params)
        meta = {"name": self.size, "lr": self.trainer.lr, "steps": steps,
                "teacher_dim": self.trainer.D.repa[-1].out_features,
                "scale_factor": self.manifest["scale_factor"],
                "tokenizer": self.params.tokenizer.source}
        with atomic_path(self.out_dir / "generator") as tmp:
            save_generator(tmp, self.trainer.G_ema, meta)
        with open(self.log_path) as f:
            rows = list(csv.DictReader(f))
        rate = images / seconds if images else _mean(r["images_per_s"] for r in rows)
        workers = self.params.train.workers
        final = {"size": self.size, "steps": steps, "lr": self.trainer.lr,
                 "images_per_s_per_worker": rate,  # rank 0, loader and logging included
                 "images_per_s": rate * workers, "workers": workers,
                 "wall_s": seconds, "steps_this_run": images // self._local_batch(),
                 "kimg": steps * self.params.train.batch / 1000}
        final.update({f"final_{k}": float(v) for k, v in rows[-1].items()
                      if v not in ("", None) and k not in ("step", "kimg")})
        write_json(self.out_dir / "metrics.json", final)
        if self.run_id:
            import mlflow

            with mlflow.start_run(run_id=self.run_id):
                mlflow.log_metrics({"train_images_per_s": rate * workers,
                                    "train_images_per_s_per_worker": rate,
                                    "train_wall_s": seconds})
                mlflow.log_artifacts(str(self.out_dir / "generator"), "generator")

    def _local_batch(self) -> int:
        return self.params.train.batch // self.params.train.workers


def _mean(values) -> float:
    numbers = [float(v) for v in values if v not in ("", None)]
    return sum(numbers) / len(numbers) if numbers else 0.0


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out

