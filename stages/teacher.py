"""Teacher tokens: [cls] + patch tokens (fp16) of every training sample, for REPA.

Shards in data/teacher/ mirror data/shards/train/ (same names, same keys, same order);
flipped samples get the tokens of the flipped image. To resume after a kill, run the same
command again: finished shards are kept.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pipeline import pretrained
from pipeline.data import open_split
from pipeline.params import REPO_ROOT, Params
from pipeline.shards import (
    TEACHER_TOKENS,
    read_manifest,
    sample_plan,
    token_fields,
    write_manifest,
    write_shards,
)
from pipeline.stage import stage_main
from stages.encode import SHARDS, tokenizer_fingerprint

TOKENS = REPO_ROOT / TEACHER_TOKENS


def run(params: Params, args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    latents = read_manifest(SHARDS)
    teacher = pretrained.load_teacher(params.teacher.source, device)
    train = open_split(params.data, "train")
    source, flipped = sample_plan(len(train), params.data.hflip)
    if len(source) != latents["samples"]:
        raise RuntimeError(f"{SHARDS}: {latents['samples']} samples but the data gives "
                           f"{len(source)}; rerun `dvc repro encode`")

    def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
        images = train.load(source[idx])
        flip = torch.from_numpy(flipped[idx]).view(-1, 1, 1, 1)
        tokens = teacher.tokens(torch.where(flip, images.flip(-1), images))
        return [token_fields(t) for t in tokens.float().cpu().numpy()]

    fingerprint = tokenizer_fingerprint(params) + params.teacher.source
    shards = write_shards(TOKENS, len(source), params.data.shard_size, encode, fingerprint,
                          params.data.encode_batch, "teacher")
    n = (teacher.image_size // teacher.patch) ** 2
    write_manifest(TOKENS, {"samples": len(source), "shards": shards,
                            "token_shape": [1 + n, teacher.dim],
                            "teacher": params.teacher.source})
    print(f"teacher: {len(source)} samples x {1 + n} tokens x {teacher.dim} in {TOKENS}")


if __name__ == "__main__":
    stage_main(__doc__, run)
