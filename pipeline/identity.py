"""What a training run *is*: the key that names its checkpoints and its MLflow run.

A run's identity is everything that changes its result:
- the model size and the training seed (``study.train_seeds``);
- the ``train`` params (the library's hyperparameters, batch, data order);
- the data: the latent shards and, when REPA is on, the teacher tokens (their sha256s);
- the code that computes a step or feeds it: :data:`TRAINING_CODE`;
- the length, in steps.

The run key is ``<base>-<steps>``, where ``base`` hashes all of it but the length: a longer
run of the same base *continues* from the longest shorter run's last checkpoint (the
schedule does not depend on the total length). Runtime knobs (``runtime.*``: workers, GPUs,
logging, checkpoint frequency) and the MLflow store are not part of it: changing them
resumes the same run. The *study* key is the same hash without the size and the seed: the
size runs of one study configuration, every seed of them, group under one MLflow study run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.files import digest
from pipeline.layout import LAYOUT, Layout
from pipeline.shards import check_pixels, check_teacher_data, read_manifest

# The code a training run's numbers depend on: the model library, the worker loop and its
# outputs, the shard loader. Editing any of it starts a new run. Other code that the
# train stage imports (params, tracking, files, the stage CLI) cannot change a trained
# result: DVC reruns the stage for it, the run resumes finished, and re-emits the same
# generator (tests/stages/test_dvc_experiments.py checks it byte for byte).
TRAINING_CODE = ("gat", "pipeline/training", "pipeline/shards.py",
                 "pipeline/pretrained/teacher.py")  # the online teacher runs in the step
LENGTH_KEYS = ("iterations", "kimg")
CODE_ROOT = Path(__file__).resolve().parent.parent  # the checkout this code runs from


def total_steps(params: Params) -> int:
    """Training length in steps: train.kimg (thousands of images) if set, else iterations."""
    if params.train.kimg > 0:
        return math.ceil(params.train.kimg * 1000 / params.train.batch)
    return params.train.iterations


def code_digest() -> str:
    """sha256 over :data:`TRAINING_CODE` of the code running now (named relative to it)."""
    return digest([CODE_ROOT / p for p in TRAINING_CODE], base=CODE_ROOT)


def teacher_data(params: Params, layout: Layout = LAYOUT) -> dict[str, Any] | None:
    """The teacher manifest a run with REPA reads (None: REPA is off).

    Refuses, before any work, teacher data that does not fit params, naming the stage to
    run: no data/teacher (`dvc repro teacher`), tokens of another teacher.mode, encoding
    or mirror (`dvc repro teacher`), an online teacher without pixels in the latent shards
    (`dvc repro encode`).
    """
    if params.train.repa_weight <= 0:
        return None
    t = params.teacher
    manifest = read_manifest(layout.teacher_tokens)
    check_teacher_data(manifest, layout.teacher_tokens, t.mode, t.encoding, t.mirror)
    if t.mode == "online":
        check_pixels(read_manifest(layout.shards), layout.shards)
    return manifest


def _short(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class RunIdentity:
    size: str
    seed: int  # the training seed: init, noise, data order
    base: str  # hash of everything but the length
    steps: int
    study: str  # hash of everything but the size and the seed

    @property
    def key(self) -> str:
        """``<base>-<steps>``: the checkpoint folder's name and the MLflow run's tag."""
        return f"{self.base}-{self.steps}"


def training_inputs(params: Params, layout: Layout = LAYOUT) -> dict[str, Any]:
    """Everything but the size, seed and length that a training run's result depends on."""
    train = {k: v for k, v in params.section("train").items() if k not in LENGTH_KEYS}
    teacher, manifest = None, teacher_data(params, layout)
    if manifest and manifest.get("mode") == "online":  # its teacher, weights and inputs
        teacher = {"online": manifest["fingerprint"]}
    elif manifest:
        teacher = [s["sha256"] for s in manifest["shards"]]
    return {"train": train,
            "shards": [s["sha256"] for s in read_manifest(layout.shards)["shards"]],
            "teacher": teacher, "code": code_digest()}


def run_identity(params: Params, size: str, seed: int, layout: Layout = LAYOUT) -> RunIdentity:
    """The identity of training ``size`` with training seed ``seed``: its study is the same
    configuration without the size and the seed (seeds replicate a configuration)."""
    inputs, steps = training_inputs(params, layout), total_steps(params)
    return RunIdentity(size=size, seed=seed, steps=steps,
                       base=_short({**inputs, "size": size, "seed": seed}),
                       study=_short({**inputs, "steps": steps}))
