"""Tokenizer: train the offline AutoencoderKL stand-in, or check the real one loads.

tokenizer.source `train`: trains a small AutoencoderKL on the train split, measures the
latent scale factor (1/std) and saves it with save_pretrained to data/tokenizer/.
A hub id or path (stabilityai/sd-vae-ft-ema): loads it (offline with HF_HUB_OFFLINE=1).
Either way: reconstruction PSNR on the eval split -> data/metrics/tokenizer.json + MLflow.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipeline import pretrained
from pipeline.data import open_split
from pipeline.files import atomic_path
from pipeline.params import REPO_ROOT, Params
from pipeline.stage import stage_main
from pipeline.tracking import record_metrics

METRICS = REPO_ROOT / "data" / "metrics" / "tokenizer.json"
PSNR_IMAGES = 2000


def run(params: Params, args: argparse.Namespace) -> None:
    train = open_split(params.data, "train")
    metrics: dict = {"source": params.tokenizer.source}
    if params.tokenizer.source == "train":
        sample = pretrained.dataset_sampler(train, params.study.seed)
        vae = pretrained.train_tokenizer(params.tokenizer, lambda b: sample(b)[0],
                                         params.study.seed)
        scale = params.tokenizer.scale_factor or pretrained.measure_scale_factor(
            vae, train.load(np.arange(min(2000, len(train)))))
        with atomic_path(pretrained.TOKENIZER_DIR) as tmp:
            vae.save_pretrained(tmp)
            (tmp / pretrained.SCALE_FILE).write_text(json.dumps({"scale_factor": scale}))
    else:
        pretrained.TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
        (pretrained.TOKENIZER_DIR / "source.txt").write_text(params.tokenizer.source + "\n")
    tok = pretrained.load_tokenizer(params.tokenizer.source,
                                    scale_factor=params.tokenizer.scale_factor)
    evaluation = open_split(params.data, "eval")
    images = evaluation.load(np.arange(min(PSNR_IMAGES, len(evaluation))))
    mean, _ = tok.encode(images)
    metrics.update(psnr_db=pretrained.psnr(tok.decode(mean * tok.scale_factor), images),
                   scale_factor=tok.scale_factor, latent_channels=int(mean.shape[1]),
                   latent_size=int(mean.shape[-1]))
    record_metrics(params, METRICS, metrics, "tokenizer")
    print(f"tokenizer: PSNR {metrics['psnr_db']:.2f} dB on {len(images)} eval images, "
          f"latent {mean.shape[1]}x{mean.shape[2]}x{mean.shape[3]}, scale {tok.scale_factor:.4f}")


if __name__ == "__main__":
    stage_main(__doc__, run)
