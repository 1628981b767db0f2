"""What ``params.yaml`` may say: one frozen dataclass per section, with defaults and checks.

Every stage calls :func:`load_params` first, so a typo'd key, an unknown model size, a
non-positive learning rate or a missing dataset is refused before any work starts, with a
message that names the key and what is allowed.

Two kinds of section:
- *what* is computed (``study``, ``data``, ``tokenizer``, ``teacher``, ``evaluator``,
  ``train``, ``evaluate``, ``scaling``, ``sweep``): DVC tracks the keys each stage reads
  (dvc.yaml ``params:``), and training hashes its keys into the run's identity;
- *how and where* it runs (``runtime``, ``tracking``): workers, GPUs, logging and
  checkpoint frequency, failures allowed, the MLflow store. No result depends on them, so
  no stage declares them and changing one retriggers nothing.

The training hyperparameters are the library's :class:`gat.train.TrainConfig`;
``train`` extends it with what only the pipeline knows (batch, length, data order).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gat.train import TrainConfig
from pipeline.config.coerce import ParamsError, as_dict, build, positive, replace_keys
from pipeline.config.trace import Traced
from pipeline.layout import REPO_ROOT

DEFAULT_PARAMS = REPO_ROOT / "params.yaml"


def _known_size(where: str, key: str, name: str) -> None:
    from gat.models import GAT_MODELS  # the size table lives in one place: the library

    if name not in GAT_MODELS:
        raise ParamsError(f"{where}.{key}: unknown model size {name!r}. "
                          f"Allowed: {', '.join(GAT_MODELS)}")


def _check_revision(where: str, source: str, revision: str) -> None:
    """A hub revision is one commit (40 hex digits): a branch or tag moves under the study."""
    if not revision:
        return
    if source == "train":
        raise ParamsError(f"{where}.revision: {revision!r} with source `train`: a stand-in "
                          "trained here has no hub revision; leave it empty")
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise ParamsError(f"{where}.revision: {revision!r} is not a commit; give the full "
                          "40-hex commit id (the model page's 'Files and versions' history, "
                          "or `huggingface-cli download ID` prints the snapshot folder), or "
                          "leave it empty for the hub's default branch (not reproducible)")


# ----------------------------------------------------------------------------- what


@dataclass(frozen=True)
class StudyParams(Traced):
    SECTION = "study"
    seed: int = 0  # the data side: stand-ins, evaluation draws, floors
    sizes: list[str] = field(default_factory=lambda: ["GAT-T1/4"])
    train_seeds: list[int] = field(default_factory=lambda: [0])  # every size, once per seed

    def check(self, where: str) -> None:
        if not self.sizes:
            raise ParamsError(f"{where}.sizes: empty; list at least one model, e.g. GAT-S/2")
        for name in self.sizes:
            _known_size(where, "sizes", name)
        for key in ("sizes", "train_seeds"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ParamsError(f"{where}.{key}: {values} lists a value twice")
        if not self.train_seeds:
            raise ParamsError(f"{where}.train_seeds: empty; list at least one seed, e.g. [0]")


@dataclass(frozen=True)
class DataParams(Traced):
    SECTION = "data"
    source: Literal["fashion-mnist", "imagefolder"] = "fashion-mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    eval_path: str = ""  # the evaluation split: ImageNet val layout (imagefolder, required)
    #                      or the test idx files' folder (fashion-mnist; empty: path)
    resolution: int = 32
    train_limit: int = 0  # 0: every image
    eval_limit: int = 0
    hflip: bool = True  # also store a horizontally flipped copy of every training image
    shard_size: int = 4096

    def check(self, where: str) -> None:
        positive(self, where, "resolution", "shard_size")
        for key in ("train_limit", "eval_limit"):
            if getattr(self, key) < 0:
                raise ParamsError(f"{where}.{key}: {getattr(self, key)} must be 0 (every "
                                  "image) or a positive number of images")
        if self.source == "imagefolder" and not self.eval_path:
            raise ParamsError(f"{where}.eval_path: empty; with source imagefolder set it to "
                              "the evaluation split's folder (ImageNet val, one sub-folder "
                              "per class)")

    def check_paths(self, where: str) -> None:
        """Checks that need this machine: the dataset folders exist."""
        if not Path(self.path).exists():
            hint = ("install it with `sudo apt-get install dataset-fashion-mnist`"
                    if self.source == "fashion-mnist"
                    else "point it at an ImageNet-style train folder (one sub-folder per class)")
            raise ParamsError(f"{where}.path: {self.path!r} does not exist; {hint}")
        if self.source == "imagefolder" and not Path(self.eval_path).exists():
            raise ParamsError(f"{where}.eval_path: {self.eval_path!r} does not exist; point "
                              "it at the evaluation split's folder (one sub-folder per class)")


@dataclass(frozen=True)
class TokenizerParams(Traced):
    SECTION = "tokenizer"
    source: str = "train"  # "train", a hub id (stabilityai/sd-vae-ft-ema) or a local path
    revision: str = ""  # a hub id's commit (40 hex); empty: the default branch, unpinned
    scale_factor: float = 0.0  # 0: the model config's, or measured on the data for "train"
    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3

    def check(self, where: str) -> None:
        positive(self, where, "latent_channels", "steps", "batch", "lr")
        _check_revision(where, self.source, self.revision)
        if self.scale_factor < 0:
            raise ParamsError(f"{where}.scale_factor: {self.scale_factor} must be 0 (from the "
                              "model config or measured) or a positive number")
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            raise ParamsError(f"{where}.block_out_channels: {self.block_out_channels} must "
                              "list positive widths, e.g. [32, 64]")


@dataclass(frozen=True)
class TeacherParams(Traced):
    SECTION = "teacher"
    source: str = "train"  # "train", a hub id (facebook/dinov2-base) or a local path
    revision: str = ""  # a hub id's commit (40 hex); empty: the default branch, unpinned
    hidden_size: int = 96
    layers: int = 4
    patch_size: int = 4
    input_size: int = 0  # px fed to the teacher; 0: its own size, at most 224 (DINOv2: 16x16)
    # REPA targets: "cached" = the teacher stage stores tokens of every training sample in
    # data/teacher; "online" = the encode stage stores pixels with the latents and every
    # train step runs the teacher on them (data/teacher then holds only a manifest).
    mode: Literal["cached", "online"] = "cached"
    # cached tokens' storage (docs/TEACHER_MODES.md measures each): fp16, bf16, fp8 (e4m3),
    # int8 (absmax scale per token)
    encoding: Literal["fp16", "bf16", "fp8", "int8"] = "fp16"
    mirror: bool = False  # cached + data.hflip: store unflipped images' tokens only; a
    #                       flipped copy reads them with the patch grid mirrored
    steps: int = 600
    batch: int = 128
    lr: float = 1e-3

    def check(self, where: str) -> None:
        positive(self, where, "hidden_size", "layers", "patch_size", "steps", "batch", "lr")
        _check_revision(where, self.source, self.revision)
        if self.input_size < 0:
            raise ParamsError(f"{where}.input_size: {self.input_size} must be 0 (the model's "
                              "own size, at most 224) or a size in pixels")


@dataclass(frozen=True)
class EvaluatorParams(Traced):
    SECTION = "evaluator"
    source: Literal["train", "inception"] = "train"  # FD-classifier or standard FID
    reference: str = ""  # a precomputed reference .npz (mu, sigma; ADM's for ImageNet 256);
    #                      empty: the `reference` stage computes it from data.eval_path
    steps: int = 600
    batch: int = 128
    lr: float = 2e-3

    def check(self, where: str) -> None:
        positive(self, where, "steps", "batch", "lr")
        if self.reference and not self.reference.endswith(".npz"):
            raise ParamsError(f"{where}.reference: {self.reference!r} is not an .npz; give a "
                              "precomputed reference (mu, sigma), e.g. ADM's "
                              "VIRTUAL_imagenet256_labeled.npz, or leave it empty")

    def check_paths(self, where: str) -> None:
        """Checks that need this machine: the precomputed reference is there."""
        if self.reference and not Path(self.reference).is_file():
            raise ParamsError(f"{where}.reference: {self.reference!r} does not exist; download "
                              "it (ADM's evaluations: VIRTUAL_imagenet256_labeled.npz) or "
                              "leave it empty to compute the reference from data.eval_path")


@dataclass(frozen=True)
class TrainParams(Traced, TrainConfig):
    """The library's hyperparameters (:class:`gat.train.TrainConfig`: lr_base, c_base, mng,
    EMA, aGP, REPA, augmentation) plus the batch, the length and the data order."""

    SECTION = "train"
    d_size: str = ""  # D's model when it differs from G's (the size); empty: the same
    batch: int = 32  # global batch over all workers and accumulation steps
    iterations: int = 200
    kimg: float = 0.0  # >0: train for this many thousand images instead of iterations
    shuffle_buffer: int = 2000  # samples a Ray worker's loader mixes (split among its
    #                             loader processes): part of the data order

    def check(self, where: str) -> None:
        positive(self, where, "batch", "lr_base", "c_base", "shuffle_buffer")
        if self.d_size:
            _known_size(where, "d_size", self.d_size)
        if self.iterations <= 0 and self.kimg <= 0:
            raise ParamsError(f"{where}.iterations / {where}.kimg: set one of them above 0")
        for key in ("ema_decay", "w_avg_beta"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ParamsError(f"{where}.{key}: {getattr(self, key)} must lie in [0, 1)")
        for key in ("agp_weight", "repa_weight", "grad_clip"):
            if getattr(self, key) < 0:
                raise ParamsError(f"{where}.{key}: {getattr(self, key)} must be 0 (off) or "
                                  "positive")
        positive(self, where, "agp_sigma")


@dataclass(frozen=True)
class EvaluateParams(Traced):
    SECTION = "evaluate"
    num_samples: int = 2000
    batch: int = 250
    psi: float = 1.0
    grid_seeds: int = 10  # columns of samples.png (one row per class, up to 16 classes)
    strip_frames: int = 8  # frames of each row of interpolation.png
    # precision/recall: balanced (equal counts) | adm (every sample vs the 10k reference)
    prc: Literal["balanced", "adm"] = "balanced"

    def check(self, where: str) -> None:
        positive(self, where, "num_samples", "batch", "grid_seeds", "strip_frames")


@dataclass(frozen=True)
class ScalingParams(Traced):
    SECTION = "scaling"
    bootstrap: int = 1000

    def check(self, where: str) -> None:
        positive(self, where, "bootstrap")


@dataclass(frozen=True)
class SweepParams(Traced):
    SECTION = "sweep"
    enabled: bool = False
    size: str = "GAT-T1/4"
    transfer: bool = True
    transfer_size: str = "GAT-T2/4"
    lr_min: float = 1e-4
    lr_max: float = 3e-3
    num_trials: int = 3
    iterations: int = 60
    grace_period: int = 20

    def check(self, where: str) -> None:
        for key in ("size", "transfer_size"):
            _known_size(where, key, getattr(self, key))
        positive(self, where, "lr_min", "lr_max", "num_trials", "iterations", "grace_period")
        if self.lr_min >= self.lr_max:
            raise ParamsError(f"{where}.lr_min must be below {where}.lr_max")


CLAIM_NAMES = ("mng", "repa", "lr_transfer", "g_vs_d", "patch")


@dataclass(frozen=True)
class ClaimsParams(Traced):
    """The paper's claims (pipeline/claims.py): which run, at what sizes, seeds, length."""

    SECTION = "claims"
    run: list[str] = field(default_factory=list)  # claim@NAME stages; empty: none (default)
    size: str = "GAT-T2/4"  # the single-size ablations (MNG, REPA) and G vs D's base
    small: str = "GAT-T1/4"  # the lr transfer: each of the two at the other's lr
    large: str = "GAT-T3/4"
    bigger: str = "GAT-T3/4"  # G vs D: G, or D, scaled up from `size` to this
    patch_sizes: list[str] = field(default_factory=lambda: ["GAT-T2/2", "GAT-T2/4"])
    iterations: int = 400  # every variant: equal steps
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    analysis_samples: int = 640  # the block analyses of MNG exp vs none: samples, per class
    analysis_per_class: int = 64

    def check(self, where: str) -> None:
        from gat.models import model_config

        for name in self.run:
            if name not in CLAIM_NAMES:
                raise ParamsError(f"{where}.run: unknown claim {name!r}. "
                                  f"Allowed: {', '.join(CLAIM_NAMES)}")
        for key in ("size", "small", "large", "bigger"):
            _known_size(where, key, getattr(self, key))
        for name in self.patch_sizes:
            _known_size(where, "patch_sizes", name)
        shapes = {(model_config(n).depth, model_config(n).width) for n in self.patch_sizes}
        if len(self.patch_sizes) < 2 or len(shapes) > 1:
            raise ParamsError(f"{where}.patch_sizes: {self.patch_sizes} must list at least two "
                              "models of one width and depth, e.g. [GAT-T2/2, GAT-T2/4]")
        positive(self, where, "iterations", "analysis_samples", "analysis_per_class")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ParamsError(f"{where}.seeds: {self.seeds} must list distinct seeds")


# ----------------------------------------------------------------------------- how and where


@dataclass(frozen=True)
class RuntimeParams(Traced):
    """How to run: none of these changes a result (same global batch, same data order)."""

    SECTION = "runtime"
    workers: int = 1  # Ray Train workers (one GPU each with use_gpu)
    use_gpu: bool = False
    # encode, teacher, reference, evaluate: on an actor pool of the Ray cluster (one actor
    # per GPU, or per cpus_per_worker CPUs) or in the stage's process. auto: the pool with
    # use_gpu; ray: the pool on CPUs too (a CPU cluster of several nodes; the rehearsal).
    pool: Literal["auto", "ray"] = "auto"
    cpus_per_worker: float = 1.0  # torch threads of a worker
    grad_accum: int = 1  # micro-batches per step (memory), same global batch
    grad_checkpointing: bool = False  # recompute activations in backward (memory)
    # Numerics (the fp path, not the method): bf16 = the forwards under bf16 autocast, as
    # the paper trains; fp32 without; auto = bf16 on CUDA, fp32 on CPU. Weights, optimizer
    # state and losses stay fp32 in all three (gat.train.GATTrainer).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False  # torch.compile G's and D's blocks (inductor): minutes of compile
    #                        at start (335 s for GAT-T1/2 on 2 busy cores), faster steps after
    allreduce: Literal["flat", "bucketed"] = "flat"  # gradient averaging over workers: one
    #                        all-reduce per network after backward, or DDP's buckets
    #                        overlapped with the backward (gat.distributed)
    bucket_mb: float = 25.0  # bucket size of allreduce: bucketed (DDP's default 25)
    loader_workers: int = 1  # DataLoader processes per worker
    max_failures: int = 1  # worker-group restarts Ray Train allows before giving up
    checkpoint_every: int = 100  # steps
    log_every: int = 10  # steps between log.csv / MLflow rows
    sample_every: int = 100  # steps between sample grids in MLflow (0: only at the end)
    sample_seeds: int = 8  # columns of those grids (one row per class, up to 10)
    fd_every: int = 0  # >0: the FD proxy (FD-classifier / FID-5K) every N steps
    fd_samples: int = 1000  # split among the workers, each on its own device
    # Seconds a worker waits in a torch.distributed collective (gradient all-reduce, the
    # FD proxy's reduce) for its slowest peer before Ray fails the group (TorchConfig's
    # timeout_s). Above the longest time one worker spends apart: rank 0's checkpoint
    # write (Ray uploads it in a thread), grid and MLflow calls, the spread of the proxy's
    # shares (docs/FD_PROXY.md).
    collective_timeout_s: int = 1800
    encode_batch: int = 256  # images per tokenizer / teacher call in encode and teacher
    trial_cpus: float = 1.0  # one sweep trial = one training process with these resources
    trial_gpus: float = 0.0
    concurrent_trials: int = 1  # sweep trials side by side
    # A claim's trainings side by side (claim@NAME stages), each run's workers on
    # cpus_per_worker / concurrent_runs CPUs: small models use 2 threads poorly
    concurrent_runs: int = 1
    # Where the Ray workers' run state and data live (README: "More than one machine"):
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    autoscale: bool = False  # the cluster grows on demand (Ray's autoscaler): ask it for the
    #                          run's workers (ray.autoscaler.sdk.request_resources) instead of
    #                          refusing a run that the nodes up now cannot hold
    storage: str = ""  # Ray Train checkpoints and Tune experiments: empty = <workspace>/outputs
    #                    (one machine); else a folder every node mounts or s3://, gs://...
    data_url: str = ""  # where workers read shards/train/ and teacher/: empty = data/ of the
    #                     checkout; else a folder or URL holding copies ({path}: a template)

    @property
    def on_pool(self) -> bool:
        """Whether the data and evaluation stages run on the Ray actor pool (``pool``)."""
        return self.use_gpu or self.pool == "ray"

    def check(self, where: str) -> None:
        positive(self, where, "workers", "cpus_per_worker", "grad_accum", "checkpoint_every",
                 "bucket_mb", "log_every", "sample_seeds", "fd_samples", "encode_batch",
                 "trial_cpus",
                 "concurrent_trials", "concurrent_runs", "collective_timeout_s")
        for key in ("loader_workers", "max_failures", "sample_every", "fd_every",
                    "trial_gpus"):
            if getattr(self, key) < 0:
                raise ParamsError(f"{where}.{key}: {getattr(self, key)} must be 0 or positive")
        if self.collective_timeout_s < 60:
            raise ParamsError(f"{where}.collective_timeout_s: {self.collective_timeout_s} s is "
                              "too short: a worker waits that long for peers while rank 0 "
                              "saves a checkpoint or logs; give at least 60 (default 1800)")
        for key, example in (("storage", "/mnt/shared/gat or s3://bucket/gat"),
                             ("data_url", "/mnt/shared/gat-data or https://host/gat-data")):
            value = getattr(self, key)
            if value and ":" not in value and not value.startswith("/"):
                raise ParamsError(f"{where}.{key}: {value!r} is a relative path: every node "
                                  f"resolves it differently. Give an absolute path or a URI "
                                  f"(e.g. {example}), or leave it empty")


@dataclass(frozen=True)
class TrackingParams(Traced):
    SECTION = "tracking"
    uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite:///<workspace>/mlflow.db
    worker_uri: str = ""  # the MLflow URI Ray workers log to (from their node); empty: uri's
    experiment: str = "gat"
    study_name: str = "gat-study"  # display name of the study's MLflow run


# ----------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Params:
    """The whole file. Sections are immutable, so one default instance serves every Params;
    the comments say which stages read each section (dvc.yaml declares the exact keys)."""

    study: StudyParams = StudyParams()  # seeds and sizes: every stage
    data: DataParams = DataParams()  # the data stages, floors
    tokenizer: TokenizerParams = TokenizerParams()  # tokenizer, encode, floors, claim@mng
    teacher: TeacherParams = TeacherParams()  # teacher_model, teacher, claim@mng
    evaluator: EvaluatorParams = EvaluatorParams()  # classifier, reference, evaluate
    train: TrainParams = TrainParams()  # train (the run key), sweep, claim@
    evaluate: EvaluateParams = EvaluateParams()  # evaluate, floors, claim@
    scaling: ScalingParams = ScalingParams()
    sweep: SweepParams = SweepParams()
    claims: ClaimsParams = ClaimsParams()  # claim@, report
    runtime: RuntimeParams = RuntimeParams()  # how: declared by no stage
    tracking: TrackingParams = TrackingParams()  # where results are recorded: by none

    def check(self, where: str) -> None:
        per_step = self.runtime.workers * self.runtime.grad_accum
        if self.train.batch % per_step:
            raise ParamsError(
                f"train.batch: {self.train.batch} is not divisible by runtime.workers x "
                f"runtime.grad_accum = {per_step}; choose a multiple of {per_step}")

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain mappings (not counted as reads: see ``section``)."""
        return as_dict(self)

    def section(self, name: str) -> dict[str, Any]:
        """One section as a mapping, every key counted as read (hashing it reads it all)."""
        obj = getattr(self, name)
        return {key: getattr(obj, key) for key in type(obj).__dataclass_fields__}


def load_params(path: str | os.PathLike | None = None, check_paths: bool = True) -> Params:
    """Read and validate a params file (default: ``params.yaml`` at the repo root).

    ``check_paths=False`` skips checks that need this machine (dataset present), so a
    profile for another machine (the paper's ImageNet study) can still be validated.
    """
    path = Path(path) if path else DEFAULT_PARAMS
    if not path.exists():
        raise ParamsError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    try:
        return parse_params(raw, check_paths=check_paths)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None


def parse_params(raw: dict[str, Any], check_paths: bool = True) -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`."""
    return build(Params, raw, "", check_paths)


def with_overrides(params: Params, overrides: dict[str, Any], check_paths: bool = True) -> Params:
    """A copy of ``params`` with dotted keys replaced (``{"train.lr_base": 1e-3}``), re-validated.

    Used by the sweep (one value per trial) and by tests; unknown keys are refused as in
    params.yaml.
    """
    return parse_params(replace_keys(params.to_dict(), overrides), check_paths=check_paths)
