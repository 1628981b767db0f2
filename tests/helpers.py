"""Test helpers: tiny but real shard directories and params files."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from pipeline.config import Params, RuntimeParams, load_params
from pipeline.shards import (
    latent_fields,
    token_fields,
    write_manifest,
    write_shards,
)

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")


def params_trace(study: Path) -> Path:
    """Where the tiny study's run recorded the params keys each stage read."""
    return study.parent / f"{study.name}-params-trace"


def dvc_env() -> dict[str, str]:
    """Environment for running the pipeline's commands in a copy of the repo."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "GAT_ROOT", "DVC_ROOT", "DVC_STAGE",
                "GAT_TRACE_PARAMS"):
        env.pop(key, None)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):  # commits of `dvc exp` and tests
        env.setdefault(key, "gat-tests")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "gat-tests@localhost")
    return env


def copy_repo(dst: Path) -> None:
    """The checkout's tracked and untracked-but-not-ignored files, as a fresh clone has."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def copy_study(src: Path, dst: Path) -> None:
    """A finished study with its git repo, DVC cache, checkpoints and MLflow store, the
    store's absolute artifact locations moved along (tests that change it use a copy)."""
    import sqlite3

    shutil.copytree(src, dst, symlinks=True)
    if not (dst / "mlflow.db").exists():
        return
    with sqlite3.connect(dst / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            db.execute(f"update {table} set {column} = replace({column}, ?, ?)",
                       (str(src), str(dst)))


def make_synthetic_shards(root: Path, samples: int = 256, shard_size: int = 32,
                          classes: int = 4, latent=(4, 8, 8), tokens=(1 + 4, 8)) -> None:
    """data/shards/train and data/teacher under ``root`` with Gaussian latents per class
    (made by the ``train`` tokenizer: data/tokenizer, if the test saves one there)."""
    rng = np.random.default_rng(0)
    labels = np.arange(samples) % classes

    def latents(idx: np.ndarray) -> list[dict[str, bytes]]:
        return [latent_fields(rng.normal(labels[j] / classes, 1.0, latent),
                              np.full(latent, 0.1), labels[j]) for j in idx]

    def teacher(idx: np.ndarray) -> list[dict[str, bytes]]:
        return [token_fields(rng.normal(0, 1, tokens)) for _ in idx]

    shard_dir, teacher_dir = root / "data" / "shards" / "train", root / "data" / "teacher"
    shards = write_shards(shard_dir, samples, shard_size, latents, "synthetic")
    write_manifest(shard_dir, {"samples": samples, "shards": shards, "num_classes": classes,
                               "latent_shape": list(latent), "scale_factor": 1.0,
                               "classes": [str(c) for c in range(classes)],
                               "tokenizer": "train"})
    tshards = write_shards(teacher_dir, samples, shard_size, teacher, "synthetic")
    write_manifest(teacher_dir, {"samples": samples, "shards": tshards,
                                 "token_shape": list(tokens)})


def synthetic_root(root: Path, classes: int = 4) -> Path:
    """A root with synthetic shards, teacher tokens and a real (untrained) AutoencoderKL as
    the `train` tokenizer (the training sample grids decode with it)."""
    from pipeline.config import TokenizerParams
    from pipeline.pretrained.tokenizer import small_autoencoder

    make_synthetic_shards(root, classes=classes)
    small_autoencoder(TokenizerParams(block_out_channels=[8, 16])).save_pretrained(
        root / "data" / "tokenizer")
    return root


def fd_root(root: Path) -> Path:
    """:func:`synthetic_root` plus what the FD proxy reads (a small classifier in
    data/classifier, reference statistics of synthetic images in data/reference): enough for
    training with ``fd_every`` and for sweep trials."""
    from pipeline.fidelity import evaluator, reference_path, reference_statistics, save_reference
    from pipeline.layout import Layout
    from tests.eval_helpers import save_classifier_dir, synthetic_images

    synthetic_root(root)
    layout = Layout(root, root)
    save_classifier_dir(layout.classifier)
    ev = evaluator("train", str(layout.classifier))
    save_reference(reference_statistics(ev, [synthetic_images(64)[0]]), reference_path(layout))
    return root


def tiny_params(tmp: Path, mlflow_uri: str, **overrides: object) -> Params:
    """The tiny profile with a test's MLflow store and overrides of train.* or runtime.*
    keys, given by their names (``batch=8, workers=2``)."""
    params = load_params(REPO / "profiles" / "tiny.yaml")
    runtime = {k: v for k, v in overrides.items() if k in RuntimeParams.__dataclass_fields__}
    train = {k: v for k, v in overrides.items() if k not in runtime}
    return dataclasses.replace(
        params, tracking=dataclasses.replace(params.tracking, uri=mlflow_uri),
        train=dataclasses.replace(params.train, **train),
        runtime=dataclasses.replace(params.runtime, **runtime))


def write_params(params: Params, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return path
