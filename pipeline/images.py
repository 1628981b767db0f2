"""Image files: many uint8 images [N, 3, H, W] as one PNG grid (sample grids, walk strips)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """uint8 [N, 3, H, W] -> one PNG, ``nrow`` images per row, 1 px apart (written where
    asked: wrap in :func:`pipeline.files.atomic_path` for an output)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255, path, nrow=nrow, padding=1, format="png")
    return path
