"""Pretrained parts, one loader each: the real thing (hub id or local path) or `train`.

- tokenizer: diffusers ``AutoencoderKL`` (``stabilityai/sd-vae-ft-ema``) with its scale factor.
- teacher: transformers ``Dinov2Model`` (``facebook/dinov2-base``): [cls] + patch tokens.
- classifier: the offline FD feature network (a small CNN: another family than the teacher).

``train`` means: the stand-in that this pipeline's own stage trained and saved under
``data/`` (no weights can be downloaded on the machines this project is built on).
Nothing is fetched unless the source is a hub id and ``HF_HUB_OFFLINE`` is not set.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from pipeline.params import REPO_ROOT, EvaluatorParams, TeacherParams, TokenizerParams

TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizer"
TEACHER_DIR = REPO_ROOT / "data" / "teacher_model"
CLASSIFIER_DIR = REPO_ROOT / "data" / "classifier"
SCALE_FILE = "gat_scale_factor.json"  # written beside a trained tokenizer
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resolve_source(source: str, trained_dir: Path) -> str:
    """``train`` -> the stand-in's directory; anything else (hub id, path) as given."""
    if source != "train":
        return source
    if not (trained_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{trained_dir}: no trained stand-in here; run its DVC stage first "
            "(`dvc repro`), or set the source in params.yaml to a hub id or a local path"
        )
    return str(trained_dir)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [-1, 1] (what the VAE expects)."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] [B, 3, H, W] -> uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ----------------------------------------------------------------------------- tokenizer


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
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, C, h, w] -> uint8 images [B, 3, H, W]."""
        latents = latents.to(self.device, next(self.vae.parameters()).dtype)
        return to_uint8(self.vae.decode(latents / self.scale_factor).sample).cpu()


def _from_pretrained(cls, path: str, what: str):
    """``cls.from_pretrained(path)`` with an error that says what to do offline."""
    try:
        return cls.from_pretrained(path)
    except OSError as err:
        raise OSError(f"{what} {path!r}: cannot load ({err}). Offline, give a local "
                      "directory written by save_pretrained, or `train`") from err


def load_tokenizer(source: str, device: str | torch.device = "cpu",
                   scale_factor: float = 0.0) -> Tokenizer:
    """AutoencoderKL from ``train`` (data/tokenizer), a hub id or a local path.

    The scale factor is ``scale_factor`` if > 0, else the one measured for a trained
    stand-in, else the model config's ``scaling_factor`` (0.18215 for SD-VAE).
    """
    from diffusers import AutoencoderKL

    path = resolve_source(source, TOKENIZER_DIR)
    vae = _from_pretrained(AutoencoderKL, path, "tokenizer")
    if scale_factor <= 0:
        measured = Path(path) / SCALE_FILE
        scale_factor = (json.loads(measured.read_text())["scale_factor"] if measured.exists()
                        else float(vae.config.scaling_factor))
    return Tokenizer(vae.to(device), scale_factor, source)


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


# ----------------------------------------------------------------------------- teacher


class Teacher:
    """A frozen Dinov2Model giving [cls] + patch tokens for uint8 images.

    Images are resized to ``input_size`` (0: the model's configured size, at most 224:
    DINOv2's config says 518, but REPA feeds 224 px, a 16x16 grid of 14 px patches).
    """

    def __init__(self, model, source: str, input_size: int = 0):
        self.model, self.source = model.eval().requires_grad_(False), source
        cfg = model.config
        self.dim, self.patch = cfg.hidden_size, cfg.patch_size
        self.image_size = input_size or min(cfg.image_size, 224)
        self.grid = self.image_size // self.patch

    @property
    def num_tokens(self) -> int:
        """1 + grid * grid: [cls] and patch tokens (register tokens are dropped)."""
        return 1 + self.grid**2

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> [B, 1 + g*g, dim], g = input size / patch size."""
        x = _imagenet_normalize(images.to(next(self.model.parameters()).device))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        out = self.model(pixel_values=x).last_hidden_state
        # [cls], then registers (if any), then patches: keep [cls] and the patch grid.
        return torch.cat([out[:, :1], out[:, out.shape[1] - self.grid**2 :]], dim=1)


def load_teacher(source: str, device: str | torch.device = "cpu",
                 input_size: int = 0) -> Teacher:
    """Dinov2Model from ``train`` (data/teacher_model), a hub id or a local path."""
    from transformers import Dinov2Model

    model = _from_pretrained(Dinov2Model, resolve_source(source, TEACHER_DIR), "teacher")
    return Teacher(model.to(device), source, input_size)


def small_dinov2(params: TeacherParams, image_size: int):
    from transformers import Dinov2Config, Dinov2Model

    heads = max(1, params.hidden_size // 32)
    cfg = Dinov2Config(hidden_size=params.hidden_size, num_hidden_layers=params.layers,
                       num_attention_heads=heads, intermediate_size=4 * params.hidden_size,
                       patch_size=params.patch_size, image_size=image_size)
    return Dinov2Model(cfg)


def train_teacher(params: TeacherParams, image_size: int, num_classes: int,
                  sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]], seed: int = 0):
    """Train a small Dinov2Model on labels ([cls] and mean patch token -> linear head).

    Supervised rather than self-distilled: minutes on a CPU, and its tokens still carry
    class-discriminative structure for REPA to align D with.
    """
    torch.manual_seed(seed)
    model = small_dinov2(params, image_size).train()
    head = nn.Linear(2 * params.hidden_size, num_classes)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=params.lr,
                            weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, params.lr, total_steps=params.steps,
                                                pct_start=0.1)
    for _ in tqdm(range(params.steps), desc="teacher", mininterval=5):
        images, labels = sample(params.batch)
        tokens = model(pixel_values=_imagenet_normalize(_random_flip(images))).last_hidden_state
        logits = head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1))
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), head.eval()


def _imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float normalised as DINOv2 expects."""
    x = images.float().to(images.device) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _random_flip(images: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(images.shape[0]) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


# ----------------------------------------------------------------------------- classifier


class Classifier(nn.Module):
    """Small CNN for the offline FD: uint8 [B, 3, H, W] -> (features [B, F], logits [B, K]).

    A convolutional network on purpose: the REPA teacher is a ViT, and FD computed in the
    teacher's own feature space would reward D's alignment target rather than image quality.
    """

    def __init__(self, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width, "feature_dim": feature_dim}

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                 nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                 nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width),
                                      block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(4 * width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, 3, H, W] -> (penultimate features [B, F], logits [B, K])."""
        x = images.to(self.head.weight.device).float() / 127.5 - 1.0
        feats = self.features(x)
        return feats, self.head(feats)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as calling the model: (features [B, F], logits [B, K]) of uint8 images."""
        return self(images)


def train_classifier(params: EvaluatorParams, num_classes: int,
                     sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                     seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier(num_classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, params.lr, total_steps=params.steps)
    for _ in tqdm(range(params.steps), desc="classifier", mininterval=5):
        images, labels = sample(params.batch)
        _, logits = model(_random_flip(images))
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def save_classifier(model: Classifier, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              directory / "classifier.safetensors")
    (directory / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")


def load_classifier(source: str = "train", device: str | torch.device = "cpu") -> Classifier:
    """The trained FD-classifier stand-in (``train`` -> data/classifier, or a directory)."""
    path = Path(resolve_source(source, CLASSIFIER_DIR))
    config = json.loads((path / "config.json").read_text())
    model = Classifier(**config)
    model.load_state_dict(load_file(path / "classifier.safetensors"))
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], dataset, limit: int = 0,
             batch: int = 500) -> float:
    """Top-1 accuracy of ``predict(uint8 [B,3,R,R]) -> logits [B,K]`` on a Dataset split.

    ``dataset`` is a pipeline.data.Dataset; ``limit`` > 0 uses its first ``limit`` samples.
    Loaded in batches, so an ImageNet-sized split never sits in memory at once.
    """
    n = min(limit or len(dataset), len(dataset))
    correct = 0
    for idx, images in dataset.batches(batch, np.arange(n)):
        pred = predict(images).argmax(1).cpu().numpy()
        correct += int((pred == dataset.labels[idx]).sum())
    return correct / n


def dataset_sampler(dataset, seed: int = 0):
    """Random mini-batches (uint8 images [B,3,R,R], labels [B]) of a pipeline.data.Dataset."""
    gen = torch.Generator().manual_seed(seed)

    def sample(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(dataset), (batch,), generator=gen).numpy()
        return dataset.load(idx), torch.as_tensor(dataset.labels[idx])

    return sample


os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
