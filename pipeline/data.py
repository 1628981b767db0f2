"""Image sources: Fashion-MNIST (Debian's idx files) and ImageNet-style class folders.

Both give the same thing: a deterministic list of samples (key, label) and a way to load
any of them as uint8 RGB [3, R, R] at the study's resolution. Deterministic order and keys
are what make encoding resumable and let teacher tokens line up with latents by key.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.params import DataParams

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "eval": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class DataError(ValueError):
    """The dataset cannot be used as given; the message names the file and what to do."""


@dataclass
class Dataset:
    """One split: ``labels[i]`` of sample i; images come from :meth:`load` in batches."""

    classes: list[str]
    labels: np.ndarray  # [N] int64
    resolution: int
    skipped: list[dict] = field(default_factory=list)  # {"file": ..., "reason": ...}
    _images: np.ndarray | None = None  # [N, H, W] uint8, in-memory sources
    _files: list[Path] | None = None  # per-sample files, imagefolder

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """uint8 RGB images [B, 3, R, R] of the given sample indices."""
        if self._images is not None:
            gray = torch.from_numpy(self._images[np.asarray(indices)]).float()[:, None]
            resized = F.interpolate(gray, size=self.resolution, mode="bilinear",
                                    align_corners=False, antialias=True)
            return resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
        assert self._files is not None
        return torch.stack([
            torch.from_numpy(load_image(self._files[i], self.resolution)).permute(2, 0, 1)
            for i in indices
        ])

    def batches(self, batch: int, indices: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (indices [B], images [B, 3, R, R] uint8) over ``indices`` (default: all)."""
        indices = np.arange(len(self)) if indices is None else indices
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            yield chunk, self.load(chunk)


def open_split(params: DataParams, split: str) -> Dataset:
    """The ``train`` or ``eval`` split of the configured source, limited by train/eval_limit."""
    if params.source == "fashion-mnist":
        ds = _fashion_mnist(Path(params.path), split, params.resolution)
    else:
        root = params.path if split == "train" else params.eval_path
        if not root:
            raise DataError("data.eval_path: empty; set it to the evaluation split's folder "
                            "(one sub-folder per class, the same class names as data.path)")
        ds = _imagefolder(Path(root), params.resolution)
    limit = params.train_limit if split == "train" else params.eval_limit
    if limit and limit < len(ds):
        ds.labels = ds.labels[:limit]
        if ds._images is not None:
            ds._images = ds._images[:limit]
        if ds._files is not None:
            ds._files = ds._files[:limit]
    return ds


# ----------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err}); reinstall dataset-fashion-mnist") from err
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist(root: Path, split: str, resolution: int) -> Dataset:
    images_name, labels_name = FASHION_MNIST_FILES[split]
    for name in (images_name, labels_name):
        if not (root / name).exists():
            raise DataError(
                f"{root / name}: missing. Install Fashion-MNIST with "
                "`sudo apt-get install dataset-fashion-mnist` (files land in "
                "/usr/share/datasets/fashion-mnist/), or set data.path to a folder holding it"
            )
    images, labels = _read_idx(root / images_name), _read_idx(root / labels_name)
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in {split}")
    return Dataset(FASHION_MNIST_CLASSES, labels.astype(np.int64), resolution, _images=images)


# ----------------------------------------------------------------------------- image folders


def _imagefolder(root: Path, resolution: int) -> Dataset:
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(
            f"{root}: no class sub-folders; expected ImageNet's layout root/CLASS/*.JPEG"
        )
    files, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        candidates = sorted(p for p in (root / name).iterdir() if p.is_file())
        accepted = 0
        for path in candidates:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append({"file": str(path), "reason": "not an image file"})
                continue
            reason = check_image(path, resolution)
            if reason:
                skipped.append({"file": str(path), "reason": reason})
                continue
            files.append(path)
            labels.append(label)
            accepted += 1
        if accepted == 0:
            skipped.append({"file": str(root / name), "reason": "empty class folder"})
    if not files:
        raise DataError(f"{root}: no usable image in any class folder (skipped: {len(skipped)})")
    return Dataset(classes, np.asarray(labels, np.int64), resolution, skipped, _files=files)


def check_image(path: Path, resolution: int) -> str:
    """Why ``path`` cannot be used ('' if it can): unreadable, truncated, or too small."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: catches truncated files, not just bad headers
            if min(img.size) < resolution:
                return f"smaller than the crop ({img.size[0]}x{img.size[1]} < {resolution})"
    except (OSError, SyntaxError, ValueError) as err:
        return f"unreadable image ({type(err).__name__}: {err})"
    return ""


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """ADM centre crop: uint8 RGB [R, R, 3]. Grayscale, CMYK, palette and alpha -> RGB."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))  # alpha over white, not black
        img = img.convert("RGB")
        # Halve with a box filter while the image is >= 2x the target, then bicubic, then
        # centre crop (guided-diffusion's center_crop_arr).
        while min(img.size) >= 2 * resolution:
            img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
        scale = resolution / min(img.size)
        img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
        arr = np.asarray(img)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return np.ascontiguousarray(arr[top : top + resolution, left : left + resolution])
