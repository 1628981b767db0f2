"""The offline FD feature network: a small CNN classifier (another family than the teacher).

Its penultimate features give "FD-classifier", a Frechet distance that is NOT FID. The
``classifier`` stage trains it and saves it to data/classifier; ``evaluator.source:
inception`` uses torch-fidelity's Inception-v3 instead (standard FID).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from pipeline.config import EvaluatorParams
from pipeline.layout import LAYOUT, Layout
from pipeline.pretrained.common import random_flip, resolve_source


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
        _, logits = model(random_flip(images))
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


def load_classifier(source: str = "train", device: str | torch.device = "cpu",
                    layout: Layout = LAYOUT) -> Classifier:
    """The trained FD-classifier stand-in (``train`` -> data/classifier, or a directory)."""
    path = Path(resolve_source(source, layout.classifier))
    config = json.loads((path / "config.json").read_text())
    model = Classifier(**config)
    model.load_state_dict(load_file(path / "classifier.safetensors"))
    return model.to(device).eval().requires_grad_(False)


