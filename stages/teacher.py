"""Teacher tokens for REPA: [cls] + patch tokens of every training sample, or, with
teacher.mode online, only a manifest (the train step runs the teacher on the shards' pixels).

Cached: shards in data/teacher/ mirror data/shards/train/ (same names, same keys, same
order), so the training loader reads latent, label and tokens aligned by key; flipped
samples get the tokens of the flipped image, or with teacher.mirror an empty field that the
loader fills with the unflipped image's tokens, patch grid mirrored. Tokens are stored in
teacher.encoding (fp16, bf16, fp8, int8; see pipeline.shards.encode_tokens).
manifest.json gives mode, encoding, mirror, token_shape [1 + g*g, dim] and grid. To resume
after a kill, run the same command again: finished shards are checked and kept.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pipeline import cluster
from pipeline.config import Params
from pipeline.data import open_split
from pipeline.files import digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.teacher import load_teacher
from pipeline.shards import (
    TOKEN_FIELDS,
    ShardError,
    check_pairs,
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
    and how they are stored."""
    t = params.teacher
    return digest([LAYOUT.teacher_model], extra={
        "shards": [s["sha256"] for s in latents["shards"]], "source": t.source,
        "input_size": t.input_size, "mode": t.mode, "encoding": t.encoding,
        "mirror": t.mirror})


def run(params: Params, args: argparse.Namespace) -> None:
    """The stage; shards that do not fit params stop it with one error line."""
    try:
        write_teacher_data(params)
    except ShardError as err:
        sys.exit(f"error: {err}")


def write_teacher_data(params: Params) -> None:
    device = cluster.device(params.runtime.use_gpu)  # refuses a GPU study without one
    latents, t = read_manifest(SHARDS), params.teacher
    teacher = load_teacher(t.source, device, t.input_size)
    train = open_split(params.data, "train")
    source, flipped = sample_plan(len(train), params.data.hflip)
    if len(source) != latents["samples"]:
        raise RuntimeError(f"{SHARDS}: {latents['samples']} samples but the data gives "
                           f"{len(source)}; rerun `dvc repro encode`")
    fingerprint = teacher_fingerprint(params, latents)
    manifest = {"samples": len(source), "mode": t.mode, "encoding": t.encoding,
                "mirror": t.mirror, "fingerprint": fingerprint,
                "token_shape": [teacher.num_tokens, teacher.dim], "grid": teacher.grid,
                "teacher": t.source, "input_size": t.input_size}
    if t.mode == "online":  # nothing to store: drop any cached shards, write the manifest
        if not latents.get("pixels"):
            raise ShardError(f"{SHARDS}: no image pixels for teacher.mode online; run "
                             "`dvc repro encode` (it stores them in online mode)")
        write_shards(TOKENS, 0, params.data.shard_size, lambda idx: [], fingerprint)
        write_manifest(TOKENS, {**manifest, "shards": []})
        print(f"teacher: online ({t.source}, {teacher.num_tokens} x {teacher.dim} tokens "
              "computed in each train step); only the manifest is written")
        return
    if t.mirror and params.data.hflip:
        check_pairs(params.data.shard_size, "teacher.mirror")

    def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
        skip = flipped[idx] if t.mirror else np.zeros(len(idx), bool)  # stored mirrored
        keep = idx[~skip]
        tokens = iter(teacher.tokens(train.load_flipped(source[keep], flipped[keep])
                                     ).float().cpu() if len(keep) else [])
        return [token_fields(None if s else next(tokens), t.encoding) for s in skip]

    shards = write_shards(TOKENS, len(source), params.data.shard_size, encode, fingerprint,
                          params.runtime.encode_batch, "teacher", TOKEN_FIELDS)
    write_manifest(TOKENS, {**manifest, "shards": shards})
    print(f"teacher: {len(source)} samples x {teacher.num_tokens} tokens x {teacher.dim} "
          f"({t.encoding}{', mirror' if t.mirror else ''}) in {TOKENS}")


if __name__ == "__main__":
    stage_main(__doc__, run)
