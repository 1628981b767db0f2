"""Image sources: Fashion-MNIST (Debian's idx files) and ImageNet-style class folders.

Both give the same thing, a :class:`Dataset`: a deterministic list of samples with labels,
and a way to load any of them as uint8 RGB [B, 3, R, R] at the study's resolution R.
Deterministic order is what makes encoding resumable and lets teacher tokens line up with
latents by key.

For evaluation code (reference statistics, FD), the simplest entry point is::

    for image, label in iter_images(params, "eval"):   # image: uint8 numpy [R, R, 3]
        ...

Splits: ``train`` and ``eval``. Fashion-MNIST: the train / t10k files under data.path.
Image folders: data.path (ImageNet train layout, root/CLASS/*.JPEG) and data.eval_path
(the same class sub-folders; classes are indexed by the train folder's sorted names). A
flat folder of images (no sub-folder) is one class, named ``.``: an unconditional dataset
such as FFHQ, on which the pipeline trains an unconditional model.
Image folders are listed class by class; their samples are put in one seeded order that
mixes the classes (:func:`mixed_order`), so that shards, and so a loader's batches, hold
every class in its share, and a limit keeps every class. Fashion-MNIST keeps its published
order, which is already mixed (its first 20,000 hold each class at 9.7-10.3%).
Unusable files (unreadable, truncated, smaller than R, not an image) are skipped and listed
in ``Dataset.skipped`` with the reason; grayscale, CMYK, palette, 16-bit and alpha images
are converted to RGB (alpha composited on white).
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import DataParams, Params

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "eval": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
FLAT = "."  # the one class of a flat image folder: the folder itself
ORDER_SEED = 0  # the image folders' sample order (mixed_order): fixed, part of the data
PARALLEL_CHECK_FROM = 512  # files: below this, a process pool costs more than it saves
LOAD_THREADS = min(8, os.cpu_count() or 1)  # PIL decodes and resizes without the GIL


class DataError(ValueError):
    """The dataset cannot be used as given; the message names the file and what to do."""


@dataclass
class Dataset:
    """One split: ``labels[i]`` of sample i; images come from :meth:`load` in batches."""

    classes: list[str]
    labels: np.ndarray  # [N] int64
    resolution: int
    skipped: list[dict] = field(default_factory=list)  # {"file": ..., "reason": ...}
    _images: np.ndarray | None = None  # [N, h, w] uint8, in-memory sources (Fashion-MNIST)
    _files: list[Path] | None = None  # per-sample files, imagefolder

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """uint8 RGB images [B, 3, R, R] of the given sample indices."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._images is not None:
            gray = torch.from_numpy(self._images[indices]).float()[:, None]
            resized = F.interpolate(gray, size=self.resolution, mode="bilinear",
                                    align_corners=False, antialias=True)
            return resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
        assert self._files is not None
        files = [self._files[i] for i in indices]
        with ThreadPoolExecutor(LOAD_THREADS) as pool:
            arrays = list(pool.map(lambda f: load_image(f, self.resolution), files))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def load_flipped(self, indices: np.ndarray, flipped: np.ndarray) -> torch.Tensor:
        """uint8 [B, 3, R, R] of samples ``indices``, mirrored where ``flipped`` [B] (the
        shards' sample plan: :func:`pipeline.shards.sample_plan`)."""
        images = self.load(indices)
        flip = torch.from_numpy(np.asarray(flipped, dtype=bool)).view(-1, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)

    def batches(self, batch: int, indices: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (indices [B], images [B, 3, R, R] uint8) over ``indices`` (default: all)."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            yield chunk, self.load(chunk)

    def limit(self, n: int) -> Dataset:
        """The first ``n`` samples (all when n is 0 or at least the size): a stratified
        subset for image folders, whose order is :func:`mixed_order`."""
        if not n or n >= len(self):
            return self
        return Dataset(self.classes, self.labels[:n], self.resolution, self.skipped,
                       None if self._images is None else self._images[:n],
                       None if self._files is None else self._files[:n])


def open_split(params: DataParams, split: str) -> Dataset:
    """The ``train`` or ``eval`` split of the configured source, limited by train/eval_limit."""
    if split not in ("train", "eval"):
        raise ValueError(f"split {split!r}: expected 'train' or 'eval'")
    if params.source == "fashion-mnist":  # eval_path: the test files' folder if not path's
        folder = params.path if split == "train" else (params.eval_path or params.path)
        ds = _fashion_mnist(Path(folder), split, params.resolution)
    else:
        if split == "eval" and not params.eval_path:
            raise DataError("data.eval_path: empty; set it to the evaluation split's folder "
                            "(one sub-folder per class, the same class names as data.path)")
        classes = _class_folders(Path(params.path))
        root = Path(params.path if split == "train" else params.eval_path)
        ds = _imagefolder(root, params.resolution, classes)
    return ds.limit(params.train_limit if split == "train" else params.eval_limit)


def iter_images(params: Params | DataParams, split: str, batch: int = 256
                ) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (image uint8 [R, R, 3] RGB numpy, label int) for every sample of ``split``.

    ``split`` is ``train`` or ``eval``; order is fixed (the dataset's), limits applied.
    """
    data = params.data if isinstance(params, Params) else params
    ds = open_split(data, split)
    for idx, images in ds.batches(batch):
        hwc = images.permute(0, 2, 3, 1).numpy()
        for i, image in zip(idx, hwc):
            yield image, int(ds.labels[i])


# ----------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err}); reinstall it with "
                        "`sudo apt-get install --reinstall dataset-fashion-mnist`") from err
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    if len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise DataError(f"{path}: {len(data)} bytes do not match its idx header {shape}; "
                        "the file is truncated: reinstall dataset-fashion-mnist")
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


def _class_folders(root: Path) -> list[str]:
    """Sorted class folder names of the train root: class index = position in this list;
    ``[FLAT]`` for a folder of images without sub-folders (one class)."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        return classes
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        return [FLAT]
    raise DataError(f"{root}: no class sub-folders and no images; expected ImageNet's layout "
                    "root/CLASS/*.JPEG, or a flat folder of images (one class)")


def _imagefolder(root: Path, resolution: int, classes: list[str]) -> Dataset:
    """Every usable image under root/CLASS/ for the given class list (train's)."""
    found = _class_folders(root)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{root / unknown[0]}: class folder not in the train split's classes "
                        f"({len(unknown)} such); eval_path must use the train folder names")
    candidates, skipped = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [{"file": str(p), "reason": "not an image file"}
                    for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        candidates += [(p, label) for p in images]
    reasons = _check_all([p for p, _ in candidates], resolution)
    files, labels = [], []
    for (path, label), reason in zip(candidates, reasons):
        if reason:
            skipped.append({"file": str(path), "reason": reason})
        else:
            files.append(path)
            labels.append(label)
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
    skipped += [{"file": str(root / name), "reason": "empty class folder (no usable image)"}
                for name, n in zip(classes, counts) if n == 0]
    if not files:
        raise DataError(f"{root}: no usable image in any class folder "
                        f"({len(skipped)} skipped, e.g. {skipped[:1]})")
    order = mixed_order(np.asarray(labels, np.int64), ORDER_SEED)
    return Dataset(classes, np.asarray(labels, np.int64)[order], resolution, skipped,
                   _files=[files[i] for i in order])


def mixed_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation [N] of samples listed class by class that mixes the classes: each
    class is shuffled, and its k-th of n samples is placed at (k + u) / n with u uniform in
    [0, 1), all classes merged by that place. So every prefix holds each class in its share
    to within about one sample (a limit is a stratified subset), and the classes are spread
    over the whole order, not in runs (what webdataset shards written in this order, read
    through a shuffle buffer, need to give batches of random class mix)."""
    rng = np.random.default_rng(seed)
    place = np.empty(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank = rng.permutation(len(members))
        place[members] = (rank + rng.random(len(members))) / len(members)
    return np.argsort(place, kind="stable")


def _check_all(paths: list[Path], resolution: int) -> list[str]:
    """check_image over many files; a process pool once there are enough to pay for it."""
    if len(paths) < PARALLEL_CHECK_FROM or (os.cpu_count() or 1) == 1:
        return [check_image(p, resolution) for p in paths]
    with ProcessPoolExecutor() as pool:
        return list(pool.map(check_image, paths, [resolution] * len(paths), chunksize=256))


def check_image(path: Path, resolution: int) -> str:
    """Why ``path`` cannot be used ('' if it can): unreadable, truncated, or too small."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if min(img.size) < resolution:
                return f"smaller than the crop ({img.size[0]}x{img.size[1]} < {resolution})"
            # JPEG draft: decode at reduced scale, still reading the whole entropy stream,
            # so a truncated file fails here at a fraction of a full decode's cost.
            img.draft("RGB", (resolution, resolution))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"unreadable image ({type(err).__name__}: {err})"
    return ""


def _to_rgb(img):
    """PIL image of any mode -> RGB: alpha over white, 16-bit/float rescaled to 8 bits."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0  # 16-bit PNGs hold up to 65535
        img = Image.fromarray((arr * 255.0 / peak).clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))  # alpha over white, not black
    return img.convert("RGB")  # L, P, CMYK, YCbCr, ... -> RGB


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """ADM centre crop: uint8 RGB [R, R, 3]. Grayscale, CMYK, palette and alpha -> RGB."""
    from PIL import Image

    with Image.open(path) as img:
        img = _to_rgb(img)
    # guided-diffusion's center_crop_arr: halve with a box filter while the image is at
    # least 2x the target, then bicubic to the short side, then crop the centre.
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return np.ascontiguousarray(arr[top : top + resolution, left : left + resolution])
