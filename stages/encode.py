"""Encode: train-split images -> webdataset shards of VAE posterior (mean, std) and labels.

Every image is encoded, plus a horizontally flipped copy when data.hflip is true. Shards
(data.shard_size samples each) land in data/shards/train/ with a manifest (counts, per-class
counts, skipped files and why, sha256 of every shard, latent shape, tokenizer, scale
factor). Batched on the GPU when there is one. To resume after a kill, run the same command
again: finished shards are kept, only the missing ones are encoded.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import torch

from pipeline import pretrained
from pipeline.data import open_split
from pipeline.params import REPO_ROOT, Params
from pipeline.shards import (
    TRAIN_SHARDS,
    latent_fields,
    sample_plan,
    write_manifest,
    write_shards,
)
from pipeline.stage import stage_main
from pipeline.tracking import record_metrics

SHARDS = REPO_ROOT / TRAIN_SHARDS


def tokenizer_fingerprint(params: Params) -> str:
    """What the latents depend on: data params, and the tokenizer's identity and weights."""
    digest = hashlib.sha256(json.dumps(
        {"data": params.to_dict()["data"], "tokenizer": params.to_dict()["tokenizer"]},
        sort_keys=True).encode())
    if params.tokenizer.source == "train":
        for file in sorted(pretrained.TOKENIZER_DIR.glob("*")):
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def run(params: Params, args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = pretrained.load_tokenizer(params.tokenizer.source, device,
                                    params.tokenizer.scale_factor)
    train = open_split(params.data, "train")
    source, flipped = sample_plan(len(train), params.data.hflip)

    def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
        images = train.load(source[idx])
        flip = torch.from_numpy(flipped[idx]).view(-1, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        mean, std = (t.float().cpu().numpy() for t in tok.encode(images))
        labels = train.labels[source[idx]]
        return [latent_fields(m, s, y) for m, s, y in zip(mean, std, labels)]

    shards = write_shards(SHARDS, len(source), params.data.shard_size, encode,
                          tokenizer_fingerprint(params), params.data.encode_batch, "encode")
    probe = tok.encode(train.load(np.arange(1)))[0]
    counts = np.bincount(train.labels, minlength=len(train.classes))
    manifest = {
        "samples": len(source), "images": len(train), "hflip": params.data.hflip,
        "classes": train.classes, "num_classes": len(train.classes),
        "counts_per_class": {c: int(n) for c, n in zip(train.classes, counts)},
        "skipped": train.skipped, "shards": shards,
        "latent_shape": list(probe.shape[1:]), "tokenizer": params.tokenizer.source,
        "scale_factor": tok.scale_factor, "source": params.data.source,
        "resolution": params.data.resolution,
    }
    write_manifest(SHARDS, manifest)
    record_metrics(params, REPO_ROOT / "data" / "metrics" / "encode.json",
                   {"samples": len(source), "images": len(train), "skipped": len(train.skipped),
                    "shards": len(shards)}, "encode")
    print(f"encode: {len(source)} samples from {len(train)} images in {len(shards)} shards "
          f"({len(train.skipped)} files skipped, listed in {SHARDS / 'manifest.json'})")


if __name__ == "__main__":
    stage_main(__doc__, run)
