"""Tiny but real parts for the evaluation tests: images, classifier, tokenizer, generator.

Everything is built here in seconds (no dataset, no downloads) and saved in the same
formats the pipeline's stages write, so the code under test loads them as it would
the real ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import Params, StudyParams
from pipeline.layout import Layout

CLASSES = 4
LATENT = (4, 16)  # channels, side: a 32 px image through a 2x tokenizer
SIZE = "GAT-T1/4"


def synthetic_images(n: int, seed: int = 0, res: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 3, res, res] and labels [n]: class k is a bright square in quadrant k on
    a noisy background, so a CNN's features differ between classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.rand(n, 3, res, res, generator=g) * 80
    half = res // 2
    for i, k in enumerate(labels.tolist()):
        y, x = (k // 2) * half, (k % 2) * half
        images[i, :, y + 2 : y + half - 2, x + 2 : x + half - 2] += 150
    return images.clamp(0, 255).to(torch.uint8), labels


def save_classifier_dir(directory: Path, seed: int = 0) -> Path:
    """A small random CNN whose BatchNorm statistics are measured on synthetic images, so
    its features have a sensible scale (an uncalibrated one squashes them to ~0)."""
    from pipeline.pretrained.classifier import Classifier, save_classifier

    torch.manual_seed(seed)
    model = Classifier(num_classes=CLASSES, width=8, feature_dim=32)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(synthetic_images(64, seed=100 + i)[0])
    save_classifier(model.eval(), directory)
    return directory


def save_tokenizer_dir(directory: Path) -> Path:
    """An untrained 2x AutoencoderKL (diffusers), saved as the tokenizer stage does."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT[0],
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32,
        mid_block_add_attention=False)
    vae.save_pretrained(directory)
    (directory / "gat_scale_factor.json").write_text(json.dumps({"scale_factor": 1.0}))
    return directory


def save_generator_dir(directory: Path, steps: int = 2, tokenizer: str = "train") -> Path:
    """GAT-T1/4 trained for a few real steps on random latents; its EMA G is saved with
    the metadata the training stage writes (``tokenizer``: what decodes its latents)."""
    from gat.io import save_generator
    from gat.train import GATTrainer, TrainConfig

    cfg = TrainConfig(repa_weight=0.0, augment=False, mng="exp")
    trainer = GATTrainer(SIZE, LATENT[0], LATENT[1], CLASSES, teacher_dim=8, cfg=cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        latents = torch.randn(8, LATENT[0], LATENT[1], LATENT[1], generator=g)
        trainer.step(latents, torch.arange(8) % CLASSES)
    save_generator(directory, trainer.G_ema, {
        "name": SIZE, "teacher_dim": 8, "scale_factor": 1.0, "steps": steps,
        "tokenizer": tokenizer, "run_key": f"test-{steps}", "study_key": "test"})
    return directory


def checkout_with_parts(parts: dict[str, Path], root: Path) -> Layout:
    """A checkout under ``root`` holding the session's tokenizer and classifier (``parts``
    fixture) where a generator's evaluation looks for them."""
    import shutil

    layout = Layout(root, root)
    shutil.copytree(parts["tokenizer"], layout.tokenizer)
    shutil.copytree(parts["classifier"], layout.classifier)
    return layout


def image_folder(root: Path, per_class: int = 6) -> Path:
    """root/c0..c3/*.png: an imagefolder dataset (train and eval) of synthetic images."""
    images, labels = synthetic_images(per_class * CLASSES, seed=7)
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return root


def stage_params(root: Path, mlflow_uri: str, sizes: list[str] | None = None,
                 **evaluate: object) -> Params:
    """Params for whole-stage runs in ``root``: the synthetic image folder as the dataset,
    the test's MLflow store, a small evaluation."""
    base = Params()
    images = str(root / "images")
    return dataclasses.replace(
        base,
        study=StudyParams(seed=0, sizes=sizes or [SIZE]),
        tracking=dataclasses.replace(base.tracking, uri=mlflow_uri, experiment="eval-test",
                                     study_name="eval-test"),
        data=dataclasses.replace(base.data, source="imagefolder", path=images,
                                 eval_path=images),
        evaluate=dataclasses.replace(base.evaluate, **{"num_samples": 64, "batch": 32,
                                                       **evaluate}))


def check_grid_shape(path: Path, rows: int, cols: int, side: int = 32) -> None:
    """A torchvision grid with padding 1: (cols * (side + 1) + 1) x (rows * (side + 1) + 1)."""
    with Image.open(path) as img:
        assert img.size == (cols * (side + 1) + 1, rows * (side + 1) + 1), img.size
        assert np.asarray(img).std() > 0  # not a blank picture
