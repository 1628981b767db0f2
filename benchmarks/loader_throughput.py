"""Latents per second read from webdataset shards by the training loader.

    python benchmarks/loader_throughput.py [--samples 40000] [--workers 2] [--batch 256]

Writes synthetic 4x32x32 fp16 posterior shards (the paper's latent shape: ImageNet 256 px
through SD-VAE) with the pipeline's own writer to a temporary folder, then reads them with
``make_train_loader`` as training does: endless, shuffle buffer, latents sampled from mean
and std in the DataLoader workers, batches handed to the main process. Reports the steady
rate (after a warm-up of a few batches, which hides worker start-up), without and with
teacher tokens (17x96 fp16, the embedded stand-in's shape).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.shards import (
    latent_fields,
    make_train_loader,
    token_fields,
    write_manifest,
    write_shards,
)


def make_shards(root: Path, samples: int, shape=(4, 32, 32), tokens=(17, 96)) -> None:
    """``samples`` latent samples (shards of 2,000) and matching teacher tokens."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(256, *shape)).astype(np.float16)
    tok = rng.normal(size=(256, *tokens)).astype(np.float16)

    def latents(idx):
        return [latent_fields(mean[j % 256], np.abs(mean[j % 256]), j % 10) for j in idx]

    def teacher(idx):
        return [token_fields(tok[j % 256]) for j in idx]

    shards = write_shards(root / "shards", samples, 2000, latents, "bench", 1000, "write")
    write_manifest(root / "shards", {"samples": samples, "shards": shards, "num_classes": 10,
                                     "latent_shape": list(shape), "scale_factor": 0.18215})
    tshards = write_shards(root / "teacher", samples, 2000, teacher, "bench", 1000, "write")
    write_manifest(root / "teacher", {"samples": samples, "shards": tshards,
                                      "token_shape": list(tokens)})


def steady_rate(root: Path, workers: int, batch: int, teacher: bool, seconds: float) -> float:
    """Latents/s over ``seconds`` of endless reading, after 2 warm-up batches per worker."""
    loader = make_train_loader(root / "shards", batch, num_workers=workers,
                               shuffle_buffer=1000,
                               teacher_dir=root / "teacher" if teacher else None)
    stream = iter(loader)
    for _ in range(2 * max(1, workers)):
        next(stream)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        n += next(stream)["latents"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del stream
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_shards(root, args.samples)
        for teacher in (False, True):
            rate = steady_rate(root, args.workers, args.batch, teacher, args.seconds)
            what = "latents + teacher tokens" if teacher else "latents"
            print(f"{args.workers} workers, batch {args.batch}: {rate:,.0f} {what}/s "
                  f"(4x32x32 fp16 posterior -> float32 sample, {args.samples} in shards)")


if __name__ == "__main__":
    main()
