"""Teacher tokens for REPA: [cls] + patch tokens of every training sample, or, with
teacher.mode online, only a manifest (the train step runs the teacher on the shards' pixels).

Cached: shards in data/teacher/ mirror data/shards/train/ (same names, same keys, same
order), so the training loader reads latent, label and tokens aligned by key; flipped
samples get the tokens of the flipped image, or with teacher.mirror an empty field that the
loader fills with the unflipped image's tokens, patch grid mirrored. Tokens are stored in
teacher.encoding (fp16, bf16, fp8, int8; see pipeline.shards.encode_tokens).
manifest.json gives mode, encoding, mirror, token_shape [1 + g*g, dim] and grid. With
runtime.use_gpu, on every GPU of the Ray cluster (pipeline/shard_pool.py), in bf16
autocast; else in this process. To resume after a kill, run the same command again:
finished shards are checked and kept.
"""

from __future__ import annotations

import argparse
import sys
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
    how they are stored, and whether they were computed in bf16 (on GPUs) or fp32."""
    t = params.teacher
    return digest([LAYOUT.teacher_model], extra={
        "shards": [s["sha256"] for s in latents["shards"]], "source": t.source,
        "revision": t.revision, "input_size": t.input_size, "mode": t.mode,
        "encoding": t.encoding, "mirror": t.mirror, "bf16": params.runtime.use_gpu})


@dataclass(frozen=True)
class TokenEncoder:
    """What a process needs to compute tokens: built once per process (this one, or each
    Ray actor), where it loads the teacher on ``device`` and opens the train split.

    On CUDA the forward runs under bf16 autocast, as REPA computes DINOv2 features inside
    its mixed-precision training step; the tokens are an alignment target, stored in
    ``encoding``.
    """

    data: DataParams
    teacher: str  # a hub id or a folder (``train`` resolved to data/teacher_model)
    revision: str
    input_size: int
    encoding: str = "fp16"
    mirror: bool = False  # flipped samples stored empty: the loader mirrors their pair's

    def __call__(self, device: str) -> Encoder:
        teacher = load_teacher(self.teacher, device, self.input_size, revision=self.revision)
        train = open_split(self.data, "train")
        source, flipped = sample_plan(len(train), self.data.hflip)
        cuda = str(device).startswith("cuda")

        def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
            """Sample indices [b] -> {tok.bin: [1 + g*g, dim] in ``encoding``} each (empty for
            a flipped sample when ``mirror``)."""
            skip = flipped[idx] if self.mirror else np.zeros(len(idx), bool)
            keep = idx[~skip]
            tokens = iter([])
            if len(keep):
                with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                    tokens = iter(teacher.tokens(
                        train.load_flipped(source[keep], flipped[keep])).float().cpu())
            return [token_fields(None if s else next(tokens), self.encoding) for s in skip]

        return encode


def run(params: Params, args: argparse.Namespace) -> None:
    """The stage; shards that do not fit params stop it with one error line."""
    try:
        write_teacher_data(params)
    except ShardError as err:
        sys.exit(f"error: {err}")


def write_teacher_data(params: Params) -> None:
    runtime, t = params.runtime, params.teacher
    latents = read_manifest(SHARDS)
    train = open_split(params.data, "train")
    source, _ = sample_plan(len(train), params.data.hflip)
    if len(source) != latents["samples"]:
        raise RuntimeError(f"{SHARDS}: {latents['samples']} samples but the data gives "
                           f"{len(source)}; rerun `dvc repro encode`")
    make = TokenEncoder(params.data, resolve_source(t.source, LAYOUT.teacher_model),
                        t.revision, t.input_size, t.encoding, t.mirror)
    fingerprint = teacher_fingerprint(params, latents)
    shape = load_teacher(make.teacher, "cpu", make.input_size, revision=make.revision)
    manifest = {"samples": len(source), "mode": t.mode, "encoding": t.encoding,
                "mirror": t.mirror, "fingerprint": fingerprint,
                "token_shape": [shape.num_tokens, shape.dim], "grid": shape.grid,
                "teacher": t.source, "revision": t.revision, "input_size": t.input_size}
    if t.mode == "online":  # nothing to store: drop any cached shards, write the manifest
        if not latents.get("pixels"):
            raise ShardError(f"{SHARDS}: no image pixels for teacher.mode online; run "
                             "`dvc repro encode` (it stores them in online mode)")
        write_shards(TOKENS, 0, params.data.shard_size, lambda idx: [], fingerprint)
        write_manifest(TOKENS, {**manifest, "shards": []})
        print(f"teacher: online ({t.source}, {shape.num_tokens} x {shape.dim} tokens "
              "computed in each train step); only the manifest is written")
        return
    if t.mirror and params.data.hflip:
        check_pairs(params.data.shard_size, "teacher.mirror")
    if runtime.on_pool:  # every GPU of the cluster (refused without one), or CPUs: pool ray
        shards = write_shards_on_ray(TOKENS, len(source), params.data.shard_size, make,
                                     fingerprint, runtime.encode_batch, "teacher",
                                     TOKEN_FIELDS, use_gpu=runtime.use_gpu,
                                     cpus=runtime.cpus_per_worker)
    else:
        shards = write_shards(TOKENS, len(source), params.data.shard_size,
                              make(cluster.device(False)), fingerprint, runtime.encode_batch,
                              "teacher", TOKEN_FIELDS)
    write_manifest(TOKENS, {**manifest, "shards": shards})
    print(f"teacher: {len(source)} samples x {shape.num_tokens} tokens x {shape.dim} "
          f"({t.encoding}{', mirror' if t.mirror else ''}) in {TOKENS}")


if __name__ == "__main__":
    stage_main(__doc__, run)
