"""Image sources: a real image folder with bad files among good ones, and Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.data import DataError, open_split
from pipeline.params import DataParams
from tests.helpers import FASHION


def _save(path, mode: str, size=(48, 40), fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 30, 30), "L": 128, "CMYK": (0, 255, 255, 0), "RGBA": (0, 0, 255, 0),
             "P": 3}[mode]
    Image.new(mode, size, color).save(path, format=fmt)


def make_imagefolder(root) -> dict[str, str]:
    """3 classes of JPEG/PNG images; returns the bad files and why they must be skipped."""
    _save(root / "cat" / "a.jpg", "RGB")
    _save(root / "cat" / "b.png", "RGBA")  # alpha: composited on white
    _save(root / "cat" / "c.jpg", "CMYK", fmt="JPEG")  # CMYK JPEG: converted
    _save(root / "dog" / "d.png", "L")  # grayscale: converted
    _save(root / "dog" / "e.png", "P")  # palette: converted
    _save(root / "dog" / "tiny.png", "RGB", size=(20, 20))  # smaller than the crop
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    good = root / "dog" / "f.png"
    _save(good, "RGB")
    data = (root / "dog" / "f.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return {"tiny.png": "smaller than the crop", "broken.jpg": "unreadable",
            "truncated.png": "unreadable", "notes.txt": "not an image", "empty": "empty class"}


def test_imagefolder_accepts_converts_and_lists_skipped(tmp_path):
    bad = make_imagefolder(tmp_path / "train")
    ds = open_split(DataParams(source="imagefolder", path=str(tmp_path / "train"),
                               eval_path=str(tmp_path / "train"), resolution=32), "train")
    assert ds.classes == ["cat", "dog", "empty"]
    assert len(ds) == 6 and list(ds.labels) == [0, 0, 0, 1, 1, 1]
    skipped = {entry["file"].rsplit("/", 1)[-1]: entry["reason"] for entry in ds.skipped}
    assert set(skipped) == set(bad)
    for name, reason in bad.items():
        assert reason in skipped[name]
    images = ds.load(np.arange(len(ds)))
    assert images.shape == (6, 3, 32, 32) and images.dtype.is_floating_point is False
    assert images[1].float().mean() > 250 - 1  # transparent PNG became white, not black
    assert (images[3, 0] == images[3, 1]).all()  # grayscale replicated to RGB


def test_empty_dataset_is_refused_with_the_folder(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.txt").write_text("no")
    with pytest.raises(DataError, match="no usable image"):
        open_split(DataParams(source="imagefolder", path=str(tmp_path / "train"),
                              eval_path="x"), "train")
    with pytest.raises(DataError, match="no class sub-folders"):
        open_split(DataParams(source="imagefolder", path=str(tmp_path / "train" / "a"),
                              eval_path="x"), "train")
    with pytest.raises(DataError, match="x: not a directory"):
        open_split(DataParams(source="imagefolder", path=str(tmp_path), eval_path="x"), "eval")


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
    assert len(open_split(DataParams(eval_limit=50), "eval")) == 50
