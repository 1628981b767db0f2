"""The tokenizer: a diffusers ``AutoencoderKL`` and its latent scale factor.

``stabilityai/sd-vae-ft-ema`` (or any hub id or ``save_pretrained`` folder), or ``train``:
the small AutoencoderKL stand-in that the ``tokenizer`` stage trains and saves to
data/tokenizer with the scale factor it measured (``gat_scale_factor.json``). The one
decoder of the project: the training grids, ``evaluate`` and ``gat sample`` all decode
through :meth:`Tokenizer.decode`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.config import TokenizerParams
from pipeline.layout import LAYOUT, Layout
from pipeline.pretrained.common import from_pretrained, resolve_source, to_uint8, to_unit

SCALE_FILE = "gat_scale_factor.json"  # written beside a trained tokenizer


class Tokenizer:
    """A frozen AutoencoderKL with its latent scale factor: scaled latents have ~unit std."""

    def __init__(self, vae, scale_factor: float, source: str):
        self.vae = vae.eval().requires_grad_(False)
        self.scale_factor, self.source = scale_factor, source

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, 3, H, W] -> posterior (mean, std) [B, C, H/f, W/f], unscaled."""
        dist = self.vae.encode(to_unit(images).to(self.device)).latent_dist
        return dist.mean, dist.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Scaled latents [N, C, h, w] -> uint8 images [N, 3, H, W] on the CPU, in batches."""
        dtype = next(self.vae.parameters()).dtype
        images = [to_uint8(self.vae.decode(z.to(self.device, dtype) / self.scale_factor).sample)
                  .cpu() for z in latents.split(batch)]
        return torch.cat(images)


def decode_dtype(device: str | torch.device) -> torch.dtype:
    """The VAE's dtype for decoding on ``device``: bfloat16 on a GPU (about twice as fast,
    half the memory, and the FD it feeds moves by far less than between seeds), float32 on
    the CPU, where bfloat16 is slower and would change the value for nothing."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_tokenizer(source: str, device: str | torch.device = "cpu", scale_factor: float = 0.0,
                   layout: Layout = LAYOUT, revision: str = "",
                   dtype: torch.dtype = torch.float32) -> Tokenizer:
    """AutoencoderKL from ``train`` (the layout's data/tokenizer), a hub id at ``revision``
    (tokenizer.revision: a commit, or empty for the hub's default branch) or a local path
    (a folder written by save_pretrained, or a stage's folder naming a hub id), on
    ``device`` in ``dtype`` (:func:`decode_dtype` for a decoder).

    The scale factor is ``scale_factor`` if > 0, else the one measured for a trained
    stand-in, else the model config's ``scaling_factor`` (0.18215 for SD-VAE).
    """
    from diffusers import AutoencoderKL

    path = resolve_source(source, layout.tokenizer)
    vae = from_pretrained(AutoencoderKL, path, "tokenizer", revision)
    if scale_factor <= 0:
        measured = Path(path) / SCALE_FILE
        scale_factor = (json.loads(measured.read_text())["scale_factor"] if measured.exists()
                        else float(vae.config.scaling_factor))
    return Tokenizer(vae.to(device, dtype), scale_factor, source)


def small_autoencoder(params: TokenizerParams):
    """A small AutoencoderKL: downsampling 2^(len(block_out_channels)-1)."""
    from diffusers import AutoencoderKL

    n = len(params.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=params.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(params.block_out_channels), layers_per_block=1,
        norm_num_groups=min(32, min(params.block_out_channels)), sample_size=32,
        # No self-attention in the mid blocks: at 32x32 it costs most of the CPU time and
        # buys little PSNR; the encoder/decoder are otherwise SD-VAE's blocks.
        mid_block_add_attention=False,
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between uint8 image batches."""
    mse = (a.float() - b.float()).square().mean().item()
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def train_tokenizer(params: TokenizerParams, sample: Callable[[int], torch.Tensor],
                    seed: int = 0) -> tuple:
    """Train a small AutoencoderKL on uint8 batches from ``sample(batch)``.

    Loss: L1 + MSE reconstruction and a small KL (1e-6, as SD-VAE's), so the posterior std
    stays meaningful for sampling latents during GAN training.
    """
    torch.manual_seed(seed)
    vae = small_autoencoder(params).train()
    opt = torch.optim.Adam(vae.parameters(), lr=params.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, params.lr, total_steps=params.steps,
                                                pct_start=0.05)
    for _ in tqdm(range(params.steps), desc="tokenizer", mininterval=5):
        x = to_unit(sample(params.batch))
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample()).sample
        kl = dist.kl().mean() / x[0].numel()
        loss = (recon - x).abs().mean() + (recon - x).square().mean() + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return vae.eval()


def measure_scale_factor(vae, images: torch.Tensor, seed: int = 0) -> float:
    """1 / std of latents sampled from the posterior of uint8 ``images`` [B, 3, H, W].

    Sampled (mean + std * eps) as the training loader draws them, so the latents G is
    trained to match have unit variance after scaling, as SD-VAE's 0.18215 intends.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        latents = vae.encode(to_unit(images)).latent_dist.sample()
    return float(1.0 / latents.std())

