"""Teacher tokens: [cls] + patch tokens (fp16) of every training sample, for REPA.

Shards in data/teacher/ mirror data/shards/train/ (same names, same keys, same order), so
the training loader reads latent, label and tokens aligned by key; flipped samples get the
tokens of the flipped image. manifest.json gives token_shape [1 + g*g, dim]. To resume
after a kill, run the same command again: finished shards are checked and kept.
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline import cluster
from pipeline.config import Params
from pipeline.data import open_split
from pipeline.files import digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.teacher import load_teacher
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
    """What the tokens depend on: the latent shards (their order), the teacher and weights."""
    return digest([LAYOUT.teacher_model], extra={
        "shards": [s["sha256"] for s in latents["shards"]], "source": params.teacher.source,
        "input_size": params.teacher.input_size})


def run(params: Params, args: argparse.Namespace) -> None:
    device = cluster.device(params.runtime.use_gpu)  # refuses a GPU study without one
    latents = read_manifest(SHARDS)
    teacher = load_teacher(params.teacher.source, device, params.teacher.input_size)
    train = open_split(params.data, "train")
    source, flipped = sample_plan(len(train), params.data.hflip)
    if len(source) != latents["samples"]:
        raise RuntimeError(f"{SHARDS}: {latents['samples']} samples but the data gives "
                           f"{len(source)}; rerun `dvc repro encode`")

    def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
        tokens = teacher.tokens(train.load_flipped(source[idx], flipped[idx]))
        return [token_fields(t) for t in tokens.float().cpu().numpy()]

    shards = write_shards(TOKENS, len(source), params.data.shard_size, encode,
                          teacher_fingerprint(params, latents), params.runtime.encode_batch,
                          "teacher", TOKEN_FIELDS)
    write_manifest(TOKENS, {"samples": len(source), "shards": shards,
                            "token_shape": [teacher.num_tokens, teacher.dim],
                            "grid": teacher.grid, "teacher": params.teacher.source})
    print(f"teacher: {len(source)} samples x {teacher.num_tokens} tokens x {teacher.dim} "
          f"in {TOKENS}")


if __name__ == "__main__":
    stage_main(__doc__, run)
