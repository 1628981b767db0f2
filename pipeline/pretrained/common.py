"""What the pretrained parts share: where a source points, pixel conversions, the offline
hint, random batches of a dataset split and top-1 accuracy on one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
SOURCE_FILE = "source.txt"  # a stage's output folder for a hub id or path holds only this


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



def from_pretrained(cls, path: str, what: str, revision: str = ""):
    """``cls.from_pretrained(path, revision=revision)`` with an error that says what to do
    offline. ``revision`` (a 40-hex commit, or empty: the hub's default branch) applies to
    a hub id; a local folder has no revisions and ignores it.

    A folder holding only ``source.txt`` (what a stage writes for a hub id or a path)
    stands for that source, at the revision it records (its second line).
    """
    marker = Path(path) / SOURCE_FILE
    if marker.is_file() and not (Path(path) / "config.json").exists():
        path, revision = read_source(marker)
    try:
        return cls.from_pretrained(path, **({"revision": revision} if revision else {}))
    except OSError as err:
        at = f" at revision {revision}" if revision else ""
        raise OSError(f"{what} {path!r}{at}: cannot load ({err}). Offline, give a local "
                      "directory written by save_pretrained, or `train`") from err


def write_source(directory: Path, source: str, revision: str = "") -> None:
    """The ``source.txt`` a stage writes for a hub id or path: the source, its revision."""
    (directory / SOURCE_FILE).write_text(f"{source}\n{revision}\n")


def read_source(marker: Path) -> tuple[str, str]:
    """(source, revision) of a ``source.txt``; the revision is empty when not pinned."""
    lines = [line.strip() for line in marker.read_text().splitlines()]
    return lines[0], (lines[1] if len(lines) > 1 else "")


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each of uint8 [B, 3, H, W] with probability 1/2."""
    flip = torch.rand(images.shape[0]) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


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

