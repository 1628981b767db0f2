"""Image sources: a real image folder with bad files among good ones, and Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import DataParams
from pipeline.data import DataError, iter_images, open_split
from tests.helpers import FASHION


def _save(path, mode: str, size=(48, 40), fmt: str | None = None, seed: int = 0) -> None:
    """A PIL-written image with structure (a random pattern), so that flips change it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "RGBA":
        img = rgb.convert("RGBA")
        img.putalpha(Image.fromarray(np.zeros((size[1], size[0]), np.uint8)))  # transparent
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    else:
        img = rgb.convert(mode)
    img.save(path, format=fmt)


def make_imagefolder(root, seed: int = 0) -> dict[str, str]:
    """3 classes of JPEG/PNG images; returns the bad files and why they must be skipped."""
    _save(root / "cat" / "a.jpg", "RGB", seed=seed)
    _save(root / "cat" / "b.png", "RGBA", seed=seed + 1)  # alpha: composited on white
    _save(root / "cat" / "c.jpg", "CMYK", fmt="JPEG", seed=seed + 2)  # CMYK JPEG: converted
    _save(root / "dog" / "d.png", "L", seed=seed + 3)  # grayscale: converted
    _save(root / "dog" / "e.png", "P", seed=seed + 4)  # palette: converted
    _save(root / "dog" / "g.png", "I;16", seed=seed + 5)  # 16-bit grayscale: rescaled
    _save(root / "dog" / "tiny.png", "RGB", size=(20, 20))  # smaller than the crop
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    _save(root / "dog" / "f.jpg", "RGB", size=(64, 64), seed=seed + 6)
    data = (root / "dog" / "f.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return {"tiny.png": "smaller than the crop", "broken.jpg": "unreadable",
            "truncated.jpg": "unreadable", "notes.txt": "not an image", "empty": "empty class"}


def _folder_params(train, evaluation=None) -> DataParams:
    return DataParams(source="imagefolder", path=str(train),
                      eval_path=str(evaluation or train), resolution=32)


def test_imagefolder_accepts_converts_and_lists_skipped(tmp_path):
    bad = make_imagefolder(tmp_path / "train")
    ds = open_split(_folder_params(tmp_path / "train"), "train")
    assert ds.classes == ["cat", "dog", "empty"]
    assert len(ds) == 7 and list(ds.labels) == [0, 0, 0, 1, 1, 1, 1]
    skipped = {entry["file"].rsplit("/", 1)[-1]: entry["reason"] for entry in ds.skipped}
    assert set(skipped) == set(bad)
    for name, reason in bad.items():
        assert reason in skipped[name]
    images = ds.load(np.arange(len(ds)))
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    assert int(images[1].min()) == 255  # fully transparent PNG became white, not black
    assert (images[3, 0] == images[3, 1]).all()  # grayscale replicated to RGB
    assert images[5].float().std() > 20  # 16-bit PNG rescaled, not clipped to white


def test_eval_split_uses_train_class_indices(tmp_path):
    make_imagefolder(tmp_path / "train")
    _save(tmp_path / "val" / "dog" / "x.png", "RGB")  # no cat, no empty: still index 1
    params = _folder_params(tmp_path / "train", tmp_path / "val")
    evaluation = open_split(params, "eval")
    assert evaluation.classes == ["cat", "dog", "empty"] and list(evaluation.labels) == [1]
    images = list(iter_images(params, "eval"))
    assert len(images) == 1 and images[0][0].shape == (32, 32, 3) and images[0][1] == 1
    _save(tmp_path / "val" / "zebra" / "y.png", "RGB")
    with pytest.raises(DataError, match=r"val/zebra: class folder not in the train split"):
        open_split(params, "eval")


def test_empty_dataset_is_refused_with_the_folder(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.txt").write_text("no")
    with pytest.raises(DataError, match="no usable image"):
        open_split(_folder_params(tmp_path / "train"), "train")
    with pytest.raises(DataError, match="no class sub-folders"):
        open_split(_folder_params(tmp_path / "train" / "a"), "train")
    with pytest.raises(DataError, match="x: not a directory"):
        open_split(_folder_params(tmp_path / "x"), "train")


def test_a_flat_folder_of_images_is_one_class(tmp_path):
    for i, mode in enumerate(("RGB", "L", "RGBA")):
        _save(tmp_path / "faces" / f"{i}.png", mode, seed=i)
    (tmp_path / "faces" / "README").write_text("not an image")
    _save(tmp_path / "held_out" / "x.png", "RGB", seed=9)
    params = _folder_params(tmp_path / "faces", tmp_path / "held_out")
    train, evaluation = open_split(params, "train"), open_split(params, "eval")
    assert train.classes == ["."] and list(train.labels) == [0, 0, 0]
    assert list(evaluation.labels) == [0]
    assert [e["reason"] for e in train.skipped] == ["not an image file"]
    assert train.load([0, 1]).shape == (2, 3, 32, 32)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        open_split(DataParams(path=str(tmp_path)), "train")


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
def test_fashion_mnist_subset():
    ds = open_split(DataParams(train_limit=100, eval_limit=50), "train")
    assert len(ds) == 100 and len(ds.classes) == 10
    images = ds.load(np.arange(8))
    assert images.shape == (8, 3, 32, 32)
    assert int(images.max()) > 200 and int(images.min()) == 0
    evaluation = list(iter_images(DataParams(eval_limit=50), "eval"))
    assert len(evaluation) == 50 and evaluation[0][0].shape == (32, 32, 3)
    assert evaluation[0][0].dtype == np.uint8 and 0 <= evaluation[0][1] < 10
