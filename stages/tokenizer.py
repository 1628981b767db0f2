"""Tokenizer: train the offline AutoencoderKL stand-in, or check the real one loads.

tokenizer.source `train`: trains a small AutoencoderKL on the train split, measures the
latent scale factor (1 / std of sampled latents) and saves both with save_pretrained to
data/tokenizer/. A hub id or path (stabilityai/sd-vae-ft-ema): loaded (offline with
HF_HUB_OFFLINE=1); data/tokenizer/ then only records the source.
Either way: reconstruction PSNR on the eval split -> results/data/tokenizer.json + MLflow.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pipeline import cluster
from pipeline.config import Params
from pipeline.data import open_split
from pipeline.files import atomic_path, digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.common import dataset_sampler, write_source
from pipeline.pretrained.tokenizer import (
    SCALE_FILE,
    Tokenizer,
    load_tokenizer,
    measure_scale_factor,
    psnr,
    train_tokenizer,
)
from pipeline.stage import stage_main
from pipeline.tracking import record_stage

PSNR_IMAGES = 2000  # eval images for the reconstruction PSNR
SCALE_IMAGES = 2000  # train images for the measured scale factor


def train_stand_in(params: Params) -> float:
    """Train, measure the scale factor, save to data/tokenizer; return seconds spent."""
    start = time.perf_counter()
    train = open_split(params.data, "train")
    sample = dataset_sampler(train, params.study.seed)
    vae = train_tokenizer(params.tokenizer, lambda b: sample(b)[0],
                                     params.study.seed)
    scale = params.tokenizer.scale_factor or measure_scale_factor(
        vae, train.load(np.arange(min(SCALE_IMAGES, len(train)))), params.study.seed)
    with atomic_path(LAYOUT.tokenizer) as tmp:
        vae.save_pretrained(tmp)
        (tmp / SCALE_FILE).write_text(json.dumps({"scale_factor": scale}))
    return time.perf_counter() - start


def reconstruction_psnr(tok: Tokenizer, params: Params) -> tuple[float, tuple]:
    """PSNR (dB) of decode(encode mean) on the first eval images; and the latent shape."""
    evaluation = open_split(params.data, "eval")
    n = min(PSNR_IMAGES, len(evaluation))
    originals, recons, shape = [], [], ()
    for _, images in evaluation.batches(250, np.arange(n)):
        mean, _ = tok.encode(images)
        shape = tuple(mean.shape[1:])
        originals.append(images)
        recons.append(tok.decode(mean * tok.scale_factor))
    return psnr(torch.cat(recons), torch.cat(originals)), shape


def run(params: Params, args: argparse.Namespace) -> None:
    metrics: dict = {"source": params.tokenizer.source, "revision": params.tokenizer.revision}
    if params.tokenizer.source == "train":
        metrics["train_seconds"] = train_stand_in(params)
    else:
        with atomic_path(LAYOUT.tokenizer) as tmp:
            tmp.mkdir()
            write_source(tmp, params.tokenizer.source, params.tokenizer.revision)
    device = cluster.device(params.runtime.use_gpu)  # refuses a GPU study without one
    tok = load_tokenizer(params.tokenizer.source, device, params.tokenizer.scale_factor,
                         revision=params.tokenizer.revision)
    psnr, shape = reconstruction_psnr(tok, params)
    metrics.update(psnr_db=psnr, scale_factor=tok.scale_factor, latent_channels=shape[0],
                   latent_size=shape[-1])
    record_stage(params, "tokenizer", metrics, digest([LAYOUT.tokenizer]))
    print(f"tokenizer: PSNR {psnr:.2f} dB on eval images, latent {'x'.join(map(str, shape))}, "
          f"scale {tok.scale_factor:.4f}")


if __name__ == "__main__":
    stage_main(__doc__, run)
