"""Typed, validated view of ``params.yaml``.

Every stage calls :func:`load_params` first, so a typo'd key, an unknown model size, a
non-positive learning rate or a missing dataset is refused before any work starts, with a
message that names the key and what is allowed.

The schema is a tree of frozen dataclasses: one class per top-level section. Adding a
parameter means adding a field here (with its default) and, if it needs more than a type
check, a line in that section's ``check``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# Where data/, outputs/ and params.yaml live: the checkout, or $GAT_ROOT (tests run whole
# stages in a temporary root this way).
REPO_ROOT = Path(os.environ.get("GAT_ROOT") or Path(__file__).resolve().parent.parent)
DEFAULT_PARAMS = REPO_ROOT / "params.yaml"
OUTPUTS = REPO_ROOT / "outputs"


def size_dir(stage: str, size: str) -> Path:
    """outputs/<stage>/<size>: ``GAT-T1/4`` nests as GAT-T1/4, as dvc.yaml's ${item} does."""
    return OUTPUTS / stage / size


class ParamsError(ValueError):
    """A value in params.yaml is wrong; the message names the key and what to do."""


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class StudyParams:
    name: str = "gat-study"
    seed: int = 0
    sizes: list[str] = field(default_factory=lambda: ["GAT-T1/4"])

    def check(self, where: str) -> None:
        from gat.models import GAT_MODELS  # the size table lives in one place: the library

        if not self.sizes:
            raise ParamsError(f"{where}.sizes: empty; list at least one model, e.g. GAT-S/2")
        for name in self.sizes:
            if name not in GAT_MODELS:
                raise ParamsError(
                    f"{where}.sizes: unknown model size {name!r}. "
                    f"Allowed: {', '.join(GAT_MODELS)}"
                )
        if len(set(self.sizes)) != len(self.sizes):
            raise ParamsError(f"{where}.sizes: {self.sizes} lists a size twice")


@dataclass(frozen=True)
class TrackingParams:
    uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else a sqlite store inside the repo
    experiment: str = "gat"


@dataclass(frozen=True)
class DataParams:
    source: Literal["fashion-mnist", "imagefolder"] = "fashion-mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    eval_path: str = ""  # imagefolder only: the evaluation split (ImageNet val layout)
    resolution: int = 32
    train_limit: int = 0  # 0: every image
    eval_limit: int = 0
    hflip: bool = True  # also store a horizontally flipped copy of every training image
    shard_size: int = 4096
    encode_batch: int = 256

    def check(self, where: str) -> None:
        _positive(self, where, "resolution", "shard_size", "encode_batch")
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
            hint = (
                "install it with `sudo apt-get install dataset-fashion-mnist`"
                if self.source == "fashion-mnist"
                else "point it at an ImageNet-style train folder (one sub-folder per class)"
            )
            raise ParamsError(f"{where}.path: {self.path!r} does not exist; {hint}")
        if self.source == "imagefolder" and not Path(self.eval_path).exists():
            raise ParamsError(f"{where}.eval_path: {self.eval_path!r} does not exist; point "
                              "it at the evaluation split's folder (one sub-folder per class)")


@dataclass(frozen=True)
class TokenizerParams:
    source: str = "train"  # "train", a hub id (stabilityai/sd-vae-ft-ema) or a local path
    scale_factor: float = 0.0  # 0: the model config's, or measured on the data for "train"
    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3

    def check(self, where: str) -> None:
        _positive(self, where, "latent_channels", "steps", "batch", "lr")
        if self.scale_factor < 0:
            raise ParamsError(f"{where}.scale_factor: {self.scale_factor} must be 0 (from the "
                              "model config or measured) or a positive number")
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            raise ParamsError(f"{where}.block_out_channels: {self.block_out_channels} must "
                              "list positive widths, e.g. [32, 64]")


@dataclass(frozen=True)
class TeacherParams:
    source: str = "train"  # "train", a hub id (facebook/dinov2-base) or a local path
    hidden_size: int = 96
    layers: int = 4
    patch_size: int = 4
    input_size: int = 0  # px fed to the teacher; 0: its own size, at most 224 (DINOv2: 16x16)
    steps: int = 600
    batch: int = 128
    lr: float = 1e-3

    def check(self, where: str) -> None:
        _positive(self, where, "hidden_size", "layers", "patch_size", "steps", "batch", "lr")
        if self.input_size < 0:
            raise ParamsError(f"{where}.input_size: {self.input_size} must be 0 (the model's "
                              "own size, at most 224) or a size in pixels")


@dataclass(frozen=True)
class EvaluatorParams:
    source: Literal["train", "inception"] = "train"  # FD-classifier or standard FID
    steps: int = 600
    batch: int = 128
    lr: float = 2e-3

    def check(self, where: str) -> None:
        _positive(self, where, "steps", "batch", "lr")


@dataclass(frozen=True)
class TrainParams:
    batch: int = 32  # global batch over all workers and accumulation steps
    iterations: int = 200
    kimg: float = 0.0  # >0: train for this many thousand images instead of iterations
    lr_base: float = 4e-4
    c_base: int = 384  # width at which lr_base was tuned (GAT-S in the paper)
    mng: Literal["none", "lin", "exp", "msg"] = "exp"
    ema_decay: float = 0.999
    agp_weight: float = 0.1
    agp_sigma: float = 0.01
    repa_weight: float = 1.0
    augment: bool = True
    grad_checkpointing: bool = False
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    grad_accum: int = 1
    checkpoint_every: int = 100
    log_every: int = 10
    sample_every: int = 100
    fd_every: int = 0  # >0: FID-5K / FD-classifier proxy every N steps
    fd_samples: int = 1000
    max_failures: int = 1
    loader_workers: int = 1
    shuffle_buffer: int = 2000

    def check(self, where: str) -> None:
        _positive(self, where, "batch", "lr_base", "c_base", "workers", "grad_accum",
                  "checkpoint_every", "log_every", "cpus_per_worker")
        if self.iterations <= 0 and self.kimg <= 0:
            raise ParamsError(f"{where}.iterations / {where}.kimg: set one of them above 0")
        per_step = self.workers * self.grad_accum
        if self.batch % per_step:
            raise ParamsError(
                f"{where}.batch: {self.batch} is not divisible by "
                f"{where}.workers x {where}.grad_accum = {per_step}; "
                f"choose a multiple of {per_step}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ParamsError(f"{where}.ema_decay: {self.ema_decay} must lie in [0, 1)")


@dataclass(frozen=True)
class EvaluateParams:
    num_samples: int = 2000
    batch: int = 250
    psi: float = 1.0

    def check(self, where: str) -> None:
        _positive(self, where, "num_samples", "batch")


@dataclass(frozen=True)
class ScalingParams:
    bootstrap: int = 1000

    def check(self, where: str) -> None:
        _positive(self, where, "bootstrap")


@dataclass(frozen=True)
class SweepParams:
    enabled: bool = False
    size: str = "GAT-T1/4"
    transfer: bool = True
    transfer_size: str = "GAT-T2/4"
    lr_min: float = 1e-4
    lr_max: float = 3e-3
    num_trials: int = 3
    iterations: int = 60
    grace_period: int = 20
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrent_trials: int = 1

    def check(self, where: str) -> None:
        from gat.models import GAT_MODELS

        for key in ("size", "transfer_size"):
            if getattr(self, key) not in GAT_MODELS:
                raise ParamsError(
                    f"{where}.{key}: unknown model size {getattr(self, key)!r}. "
                    f"Allowed: {', '.join(GAT_MODELS)}"
                )
        _positive(self, where, "lr_min", "lr_max", "num_trials", "iterations", "cpus_per_trial",
                  "concurrent_trials")
        if self.gpus_per_trial < 0:
            raise ParamsError(f"{where}.gpus_per_trial must be 0 (CPU) or positive, got "
                              f"{self.gpus_per_trial}")
        if self.lr_min >= self.lr_max:
            raise ParamsError(f"{where}.lr_min must be below {where}.lr_max")


@dataclass(frozen=True)
class Params:
    study: StudyParams = field(default_factory=StudyParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    data: DataParams = field(default_factory=DataParams)
    tokenizer: TokenizerParams = field(default_factory=TokenizerParams)
    teacher: TeacherParams = field(default_factory=TeacherParams)
    evaluator: EvaluatorParams = field(default_factory=EvaluatorParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    scaling: ScalingParams = field(default_factory=ScalingParams)
    sweep: SweepParams = field(default_factory=SweepParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading


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
    return _build(Params, raw, "", check_paths)


def _build(cls: type, raw: Any, where: str, check_paths: bool) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{where or 'params'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParamsError(
                f"{_join(where, key)}: unknown key{hint}. Allowed keys: {', '.join(fields)}"
            )
    kwargs = {}
    for name in fields:
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], _join(where, name), check_paths)
    obj = cls(**kwargs)
    section = where.lstrip(".") or cls.__name__
    check = getattr(obj, "check", None)
    if check is not None:
        check(section)
    if check_paths and hasattr(obj, "check_paths"):  # needs this machine (dataset folders)
        obj.check_paths(section)
    return obj


def _coerce(value: Any, typ: Any, key: str, check_paths: bool) -> Any:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, key, check_paths)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(map(str, args))
            raise ParamsError(f"{key}: {value!r} is not allowed. Allowed: {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, check_paths)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", check_paths) for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        # YAML 1.1 reads 4e-4 (no dot) as a string: accept it as the number it means.
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ParamsError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"params schema: unsupported type {typ} at {key}")


def _positive(obj: Any, where: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:  # also refuses NaN
            raise ParamsError(f"{where}.{name}: {value} must be greater than 0")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def with_overrides(params: Params, overrides: dict[str, Any], check_paths: bool = True) -> Params:
    """A copy of ``params`` with dotted keys replaced (``{"train.lr_base": 1e-3}``), re-validated.

    Used by the sweep (one value per trial) and by tests; unknown keys are refused as in
    params.yaml.
    """
    raw = params.to_dict()
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ParamsError(f"{dotted}: unknown section {key!r}")
            node = node[key]
        if leaf not in node:
            raise ParamsError(f"{dotted}: unknown key. Allowed keys: {', '.join(node)}")
        node[leaf] = value
    return parse_params(raw, check_paths=check_paths)
