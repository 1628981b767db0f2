"""Teacher tokens: [cls] + patch tokens (fp16) of every training sample, for REPA.

Shards in data/teacher/ mirror data/shards/train/ (same names, same keys, same order), so
the training loader reads latent, label and tokens aligned by key; flipped samples get the
tokens of the flipped image. manifest.json gives token_shape [1 + g*g, dim]. With
runtime.use_gpu, on every GPU of the Ray cluster (pipeline/shard_pool.py), in bf16
autocast; else in this process. To resume after a kill, run the same command again:
finished shards are checked and kept.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import cluster
from pipeline.config import DataParams, Params
from pipeline.data import open_split
from pipeline.files import digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.common import resolve_source
from pipeline.pretrained.teacher import load_teacher
from pipeline.shard_pool import Encoder, write_shards_on_ray
from pipeline.shards import (
    TOKEN_FIELDS,
    read_manifest,
    sample_plan,
    token_fields,
    write_manifest,
    write_shards,
)
from pipeline.stage import stage_main

SHARDS, TOKENS = LAYOUT.shards, LAYOUT.teacher_tokens


def teacher_fingerprint(params: Params, latents: dict) -> str:
    """What the tokens depend on: the latent shards (their order), the teacher and weights,
    and whether they were computed in bf16 (on GPUs) or fp32."""
    return digest([LAYOUT.teacher_model], extra={
        "shards": [s["sha256"] for s in latents["shards"]], "source": params.teacher.source,
        "revision": params.teacher.revision, "input_size": params.teacher.input_size,
        "bf16": params.runtime.use_gpu})


@dataclass(frozen=True)
class TokenEncoder:
    """What a process needs to compute tokens: built once per process (this one, or each
    Ray actor), where it loads the teacher on ``device`` and opens the train split.

    On CUDA the forward runs under bf16 autocast, as REPA computes DINOv2 features inside
    its mixed-precision training step; the tokens are an alignment target, stored in fp16.
    """

    data: DataParams
    teacher: str  # a hub id or a folder (``train`` resolved to data/teacher_model)
    revision: str
    input_size: int

    def __call__(self, device: str) -> Encoder:
        teacher = load_teacher(self.teacher, device, self.input_size, revision=self.revision)
        train = open_split(self.data, "train")
        source, flipped = sample_plan(len(train), self.data.hflip)
        cuda = str(device).startswith("cuda")

        def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
            """Sample indices [b] -> {tok.bin: fp16 [1 + g*g, dim]} each."""
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                tokens = teacher.tokens(train.load_flipped(source[idx], flipped[idx]))
            return [token_fields(t) for t in tokens.float().cpu().numpy()]

        return encode


def run(params: Params, args: argparse.Namespace) -> None:
    runtime = params.runtime
    latents = read_manifest(SHARDS)
    train = open_split(params.data, "train")
    source, _ = sample_plan(len(train), params.data.hflip)
    if len(source) != latents["samples"]:
        raise RuntimeError(f"{SHARDS}: {latents['samples']} samples but the data gives "
                           f"{len(source)}; rerun `dvc repro encode`")
    make = TokenEncoder(params.data, resolve_source(params.teacher.source, LAYOUT.teacher_model),
                        params.teacher.revision, params.teacher.input_size)
    fingerprint = teacher_fingerprint(params, latents)
    if runtime.use_gpu:  # every GPU of the Ray cluster; refuses a cluster without one
        shards = write_shards_on_ray(TOKENS, len(source), params.data.shard_size, make,
                                     fingerprint, runtime.encode_batch, "teacher",
                                     TOKEN_FIELDS, use_gpu=True, cpus=runtime.cpus_per_worker)
    else:
        shards = write_shards(TOKENS, len(source), params.data.shard_size,
                              make(cluster.device(False)), fingerprint, runtime.encode_batch,
                              "teacher", TOKEN_FIELDS)
    teacher = load_teacher(make.teacher, "cpu", make.input_size, revision=make.revision)
    write_manifest(TOKENS, {"samples": len(source), "shards": shards,
                            "token_shape": [teacher.num_tokens, teacher.dim],
                            "grid": teacher.grid, "teacher": params.teacher.source,
                            "revision": params.teacher.revision})
    print(f"teacher: {len(source)} samples x {teacher.num_tokens} tokens x {teacher.dim} "
          f"in {TOKENS}")


if __name__ == "__main__":
    stage_main(__doc__, run)
