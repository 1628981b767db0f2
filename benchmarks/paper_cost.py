"""The paper profile's compute, counted: FLOPs per training iteration of every size, of the
evaluation and of the data stages, and what the whole study costs on a GPU cluster.

    python benchmarks/paper_cost.py                      # profiles/paper.yaml, 8 H100s, MFU 35%
    python benchmarks/paper_cost.py --mfu 0.25 --gpus 16 --peak-tflops 989

Nothing here runs at ImageNet scale: every figure is counted with the project's FLOP
counter (:func:`gat.flops.counted`, torch's FlopCounterMode, math SDPA, a multiply-add = 1
FLOP as in the paper; GPU throughput is quoted in FLOP/s = 2 x MAC/s) on randomly
initialised networks of the real shapes, on this CPU:

- one ``GATTrainer.step`` of each size at the profile's train params (G forward for the
  fakes, D forward and backward on reals, fakes and their aGP copies at the K=4 MNG
  levels, the REPA head against DINOv2-B's 257 x 768 tokens, G forward and backward
  through the frozen D), at batch 2, divided by 2 and multiplied by train.batch;
- SD-VAE (diffusers AutoencoderKL, sd-vae-ft-ema's config) encoder at 256 px and decoder
  of a 4 x 32 x 32 latent; DINOv2-B (transformers Dinov2Model, 224 px); Inception-v3
  (torchvision's architecture, 299 px, the FID network's shape).

Elementwise work (norms, activations, Adam) is not counted, so real step times are
longer than FLOPs / (peak x MFU) by what those cost: the assumed MFU covers it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from gat.flops import counted, model_facts
from gat.models import GAT_MODELS, model_config
from gat.train import GATTrainer
from pipeline.config import load_params
from pipeline.config.profiles import resolve

TEACHER_TOKENS = (257, 768)  # DINOv2-B at 224 px: [cls] + 16 x 16 patches, 768-d
LATENT = (4, 32)  # SD-VAE at 256 px: 4 x 32 x 32


def step_gmacs_per_image(size: str, train, batch: int = 2, depth: int | None = None) -> float:
    """GMACs of one training step per image (the profile's train params); ``depth``: the
    same size with that many blocks in G and D (see :func:`step_gmacs_by_depth`)."""
    name = size
    if depth is not None:
        name = f"{size}@depth{depth}"
        GAT_MODELS[name] = dataclasses.replace(GAT_MODELS[size], depth=depth)
    try:
        torch.manual_seed(0)
        trainer = GATTrainer(name, LATENT[0], LATENT[1], 1000, TEACHER_TOKENS[1], train, "cpu",
                             seed=0)
        x = torch.randn(batch, LATENT[0], LATENT[1], LATENT[1])
        c = torch.randint(0, 1000, (batch,))
        tokens = torch.randn(batch, *TEACHER_TOKENS)
        return counted(trainer.step, x, c, tokens)[1] / batch
    finally:
        GAT_MODELS.pop(f"{size}@depth{depth}", None)


def step_gmacs_by_depth(size: str, train) -> float:
    """A step's GMACs per image at ``size``, counted at 4 and 8 blocks and extrapolated to
    the size's depth. A full GAT-XL/2 trainer (G, D, EMA copy, gradients, Adam state: ~24
    GB) does not fit this machine; every block of G and D has the same shape and the K=4
    MNG heads, the mapping network and the REPA head do not depend on the depth, so the
    count is exactly affine in the depth (checked by main() at GAT-S/2, where both fit)."""
    four, eight = (step_gmacs_per_image(size, train, depth=d) for d in (4, 8))
    return four + (eight - four) / 4 * (model_config(size).depth - 4)


def vae_gmacs() -> tuple[float, float]:
    """(encode one 256 px image, decode one 4 x 32 x 32 latent) of SD-VAE's architecture."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=256,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()
    with torch.no_grad():
        enc = counted(vae.encode, torch.zeros(1, 3, 256, 256))[1]
        dec = counted(vae.decode, torch.zeros(1, 4, 32, 32))[1]
    return enc, dec


def dinov2_gmacs() -> float:
    """DINOv2-B's forward on one 224 px image."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12,
                                     num_attention_heads=12, patch_size=14,
                                     image_size=224)).eval()
    with torch.no_grad():
        return counted(model, torch.zeros(1, 3, 224, 224))[1]


def inception_gmacs() -> float:
    """Inception-v3's forward on one 299 px image (torchvision's architecture)."""
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    with torch.no_grad():
        return counted(model, torch.zeros(1, 3, 299, 299))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak per GPU in TFLOP/s (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.35,
                        help="assumed model-FLOPs utilisation of the counted FLOPs")
    args = parser.parse_args()
    params = load_params(resolve(args.profile), check_paths=False)  # no ImageNet here
    train, ev, rt = params.train, params.evaluate, params.runtime
    images = 1_281_167  # ImageNet-1k train
    samples = images * (2 if params.data.hflip else 1)
    rate = args.gpus * args.peak_tflops * 1e12 * args.mfu / 2  # MAC/s of the cluster

    def hours(gmacs: float) -> float:
        return gmacs * 1e9 / rate / 3600

    t0 = time.perf_counter()
    enc, dec = vae_gmacs()
    dino, incep = dinov2_gmacs(), inception_gmacs()
    print(f"per image, GMACs: SD-VAE encode 256px {enc:.1f}, decode 32x32 latent {dec:.1f}; "
          f"DINOv2-B 224px {dino:.1f}; Inception-v3 299px {incep:.2f}")
    data_gmacs = samples * (enc + dino)
    print(f"data stages: encode + teacher over {samples:,} samples = {data_gmacs:.3g} GMACs "
          f"= {hours(data_gmacs):.2f} h on the cluster; online teacher instead adds "
          f"{dino * train.batch:.3g} GMACs per iteration ({train.batch} reals)")
    check = params.study.sizes[0]
    direct, affine = step_gmacs_per_image(check, train), step_gmacs_by_depth(check, train)
    print(f"{check}: a step counted whole {direct:.2f} GMACs/img, from depths 4 and 8 "
          f"{affine:.2f} (ratio {affine / direct:.4f})")
    print()
    print(f"| size | train GMACs/img | train GMACs/iter (batch {train.batch}) | training C "
          f"({train.iterations} iters), GFLOPs-MAC | FD proxies | FID-50K eval | GPU-hours "
          f"| wall hours on {args.gpus} GPUs |")
    print("|---|---|---|---|---|---|---|---|")
    total_h = hours(data_gmacs)
    proxies = train.iterations // rt.fd_every if rt.fd_every else 0
    for size in params.study.sizes:
        per_img = step_gmacs_by_depth(size, train)
        g_fwd = float(model_facts(size, LATENT[0], LATENT[1])["g_gflops"])
        per_sample_eval = g_fwd + dec + incep
        training = per_img * train.batch * train.iterations
        proxy = proxies * rt.fd_samples * per_sample_eval
        evaluation = ev.num_samples * per_sample_eval
        h = hours(training + proxy + evaluation)
        total_h += h
        print(f"| {size} | {per_img:.1f} | {per_img * train.batch:.4g} | {training:.3g} "
              f"| {proxy:.3g} | {evaluation:.3g} | {h * args.gpus:.0f} | {h:.1f} |")
    print()
    print(f"whole ladder (one seed) + data stages: {total_h:.1f} h wall on {args.gpus} GPUs = "
          f"{total_h * args.gpus:.0f} GPU-hours at {args.peak_tflops:.0f} TFLOP/s peak and "
          f"MFU {args.mfu:.0%} (assumed); counted in {time.perf_counter() - t0:.0f} s on this "
          f"CPU (load {' '.join(f'{v:.2f}' for v in os.getloadavg())})")


if __name__ == "__main__":
    main()
