"""Encode: train-split images -> webdataset shards of VAE posterior (mean, std) and labels.

Every image is encoded, plus a horizontally flipped copy when data.hflip is true (sample
2i: image i, sample 2i+1: image i flipped). Shards of data.shard_size samples land in
data/shards/train/ with manifest.json: sample and image counts, counts per class, class
names (index = position), skipped files and why, sha256 of every shard, latent shape,
tokenizer and scale factor. With teacher.mode online, every unflipped sample also holds its
pixels (img.bin, uint8 [3, H, W] at data.resolution, what the cached teacher stage feeds the
teacher too), and a flipped one an empty field the loader fills by flipping its pair's
(exact); the manifest's ``pixels`` gives [3, H, W]. With runtime.use_gpu, on every GPU
of the Ray cluster (one actor per GPU, one task per missing shard: pipeline/shard_pool.py);
else in this process, on its GPU if it has one. To resume after a kill, run the same
command again: finished shards are checked and kept, only the missing ones are encoded (no
key twice, none missing).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from pipeline import cluster
from pipeline.config import DataParams, Params
from pipeline.data import open_split
from pipeline.files import digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.common import resolve_source
from pipeline.pretrained.tokenizer import load_tokenizer
from pipeline.shard_pool import Encoder, write_shards_on_ray
from pipeline.shards import (
    LATENT_FIELDS,
    ShardError,
    check_pairs,
    image_fields,
    latent_fields,
    sample_plan,
    write_manifest,
    write_shards,
)
from pipeline.stage import stage_main
from pipeline.tracking import record_stage

SHARDS = LAYOUT.shards


def tokenizer_fingerprint(params: Params) -> str:
    """What the latents depend on: the data params, and the tokenizer's identity and weights."""
    data = params.data
    extra = {"data": [data.source, data.path, data.resolution, data.train_limit, data.hflip,
                      data.shard_size],
             "tokenizer": params.tokenizer.source, "revision": params.tokenizer.revision,
             "scale_factor": params.tokenizer.scale_factor}
    if params.teacher.mode == "online":  # (only then: cached studies keep their shards)
        extra["pixels"] = True
    return digest([LAYOUT.tokenizer], extra=extra)


@dataclass(frozen=True)
class LatentEncoder:
    """What a process needs to encode samples: built once per process (this one, or each Ray
    actor), where it loads the tokenizer on ``device`` and opens the train split.

    VAE encode stays in fp32 on the GPU too (as DiT's feature extraction): the latents are
    the data G learns, and bf16's 8-bit mantissa is coarser than their fp16 storage.
    """

    data: DataParams
    tokenizer: str  # a hub id or a folder (``train`` resolved to data/tokenizer)
    revision: str
    scale_factor: float
    pixels: bool = False  # teacher.mode online: the train step's teacher reads them

    def __call__(self, device: str) -> Encoder:
        tok = load_tokenizer(self.tokenizer, device, self.scale_factor, revision=self.revision)
        train = open_split(self.data, "train")
        source, flipped = sample_plan(len(train), self.data.hflip)

        def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
            """Sample indices [b] -> {lat.bin: fp16 (mean, std) [2, C, h, w], cls} each (and
            img.bin, uint8 [3, H, W], when ``pixels``: empty for a flipped sample)."""
            images = train.load_flipped(source[idx], flipped[idx])
            mean, std = (t.float().cpu().numpy() for t in tok.encode(images))
            labels = train.labels[source[idx]]
            fields = [latent_fields(m, s, y) for m, s, y in zip(mean, std, labels)]
            if self.pixels:  # a flipped sample's pixels: its pair's, flipped by the loader
                for f, image, flip in zip(fields, images.cpu().numpy(), flipped[idx]):
                    f.update(image_fields(None if flip else image))
            return fields

        return encode


def run(params: Params, args: argparse.Namespace) -> None:
    runtime = params.runtime
    train = open_split(params.data, "train")
    source, _ = sample_plan(len(train), params.data.hflip)
    pixels = params.teacher.mode == "online"
    if pixels and params.data.hflip:
        try:
            check_pairs(params.data.shard_size, "teacher.mode online")
        except ShardError as err:
            sys.exit(f"error: {err}")
    make = LatentEncoder(params.data, resolve_source(params.tokenizer.source, LAYOUT.tokenizer),
                         params.tokenizer.revision, params.tokenizer.scale_factor, pixels)
    fingerprint = tokenizer_fingerprint(params)
    fields = (*LATENT_FIELDS, "img.bin") if pixels else LATENT_FIELDS
    shard_args = (len(source), params.data.shard_size, make, fingerprint, runtime.encode_batch,
                  "encode", fields)
    if runtime.on_pool:  # every GPU of the cluster (refused without one), or CPUs: pool ray
        shards = write_shards_on_ray(SHARDS, *shard_args, use_gpu=runtime.use_gpu,
                                     cpus=runtime.cpus_per_worker)
        device = "cpu"  # the driver only probes one image for the latent shape
    else:
        device = cluster.device(False)
        shards = write_shards(SHARDS, len(source), params.data.shard_size, make(device),
                              fingerprint, runtime.encode_batch, "encode", fields)
    tok = load_tokenizer(make.tokenizer, device, make.scale_factor, revision=make.revision)
    shape = tok.encode(train.load(np.arange(1)))[0].shape[1:]
    counts = np.bincount(train.labels, minlength=len(train.classes))
    write_manifest(SHARDS, {
        "samples": len(source), "images": len(train), "hflip": params.data.hflip,
        "classes": train.classes, "num_classes": len(train.classes),
        "counts_per_class": {c: int(n) for c, n in zip(train.classes, counts)},
        "skipped": train.skipped, "shards": shards, "latent_shape": [int(x) for x in shape],
        "tokenizer": params.tokenizer.source, "tokenizer_revision": params.tokenizer.revision,
        "scale_factor": tok.scale_factor,
        "source": params.data.source, "resolution": params.data.resolution,
        "pixels": [3, params.data.resolution, params.data.resolution] if pixels else None,
    })
    record_stage(params, "encode", {"samples": len(source), "images": len(train),
                                    "skipped": len(train.skipped), "shards": len(shards)},
                 fingerprint)
    print(f"encode: {len(source)} samples from {len(train)} images in {len(shards)} shards "
          f"({len(train.skipped)} files skipped, listed in {SHARDS / 'manifest.json'})")


if __name__ == "__main__":
    stage_main(__doc__, run)
