"""Image sources: a real image folder with bad files among good ones, and Fashion-MNIST."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import DataParams
from pipeline.data import DataError, iter_images, open_split
from pipeline.shards import (
    latent_fields,
    make_train_loader,
    sample_plan,
    write_manifest,
    write_shards,
)
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
    # in the mixed order (tests below), each file with its own label
    names = [f.name for f in ds._files]
    assert sorted(zip(names, ds.labels.tolist())) == [
        ("a.jpg", 0), ("b.png", 0), ("c.jpg", 0), ("d.png", 1), ("e.png", 1), ("f.jpg", 1),
        ("g.png", 1)]
    skipped = {entry["file"].rsplit("/", 1)[-1]: entry["reason"] for entry in ds.skipped}
    assert set(skipped) == set(bad)
    for name, reason in bad.items():
        assert reason in skipped[name]
    images = dict(zip(names, ds.load(np.arange(len(ds)))))
    assert images["a.jpg"].shape == (3, 32, 32) and images["a.jpg"].dtype == torch.uint8
    assert int(images["b.png"].min()) == 255  # fully transparent PNG: white, not black
    assert (images["d.png"][0] == images["d.png"][1]).all()  # grayscale replicated to RGB
    assert images["g.png"].float().std() > 20  # 16-bit PNG rescaled, not clipped to white


def _classwise_folder(root, classes: int, per_class: int) -> DataParams:
    """An image folder as ImageNet's: class sub-folders, files listed class by class."""
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((16, 16, 3), 8 * c, np.uint8)).save(
                root / f"n{c:08d}" / f"{i:04d}.png")
    return DataParams(source="imagefolder", path=str(root), eval_path=str(root),
                      resolution=16)


def test_a_limit_keeps_every_class_in_its_share(tmp_path):
    params = _classwise_folder(tmp_path / "train", classes=8, per_class=12)
    for limit in (8, 24, 40):
        ds = open_split(dataclasses.replace(params, train_limit=limit, eval_limit=limit),
                        "train")
        counts = np.bincount(ds.labels, minlength=8)
        assert len(ds) == limit and counts.min() >= limit // 8 and counts.max() <= -(-limit // 8)
    # seeded: the same order every time, and a permutation of every file
    first, again = (open_split(params, "train") for _ in range(2))
    assert first._files == again._files and len(set(first._files)) == 96


def _batch_chi2(labels: np.ndarray, batches: list[np.ndarray], classes: int) -> float:
    """Sum over batches of Pearson's chi-square of the batch's class counts against the
    whole data's class shares."""
    share = np.bincount(labels, minlength=classes) / len(labels)
    total = 0.0
    for batch in batches:
        expected = share * len(batch)
        total += float((((np.bincount(batch, minlength=classes) - expected) ** 2)
                        / expected).sum())
    return total


def _loader_batches(tmp_path, sample_labels: np.ndarray, classes: int) -> list[np.ndarray]:
    """The class labels of a training loader's batches over shards written in the order of
    ``sample_labels`` (shard 64, shuffle buffer 32, batch 16: the paper's ratios of shard
    to buffer to batch, 8192 / 20000 / 64 per GPU, at a test's scale)."""
    out = tmp_path / f"shards-{abs(hash(sample_labels.tobytes()))}"
    latent = (4, 2, 2)

    def encode(idx: np.ndarray) -> list[dict[str, bytes]]:
        return [latent_fields(np.zeros(latent), np.full(latent, 0.1), int(sample_labels[j]))
                for j in idx]

    shards = write_shards(out, len(sample_labels), 64, encode, "test")
    write_manifest(out, {"samples": len(sample_labels), "shards": shards,
                         "num_classes": classes, "latent_shape": list(latent),
                         "scale_factor": 1.0, "classes": [str(c) for c in range(classes)],
                         "tokenizer": "train"})
    loader = make_train_loader(out, 16, num_workers=0, shuffle_buffer=32, epochs=1)
    return [batch["labels"].numpy() for batch in loader]


def test_loader_batches_from_a_classwise_folder_mix_classes_as_random_draws(tmp_path):
    """The class histogram of a loader's batches, over shards encoded from a folder listed
    class by class, is within what random batches give (chi-square, 99th percentile of
    200 random epochs); shards in the folder's own class order are far outside it."""
    classes = 8
    ds = open_split(_classwise_folder(tmp_path / "train", classes, 32), "train")
    index, _ = sample_plan(len(ds), hflip=True)  # flip pairs stay side by side
    labels = ds.labels[index]
    rng = np.random.default_rng(1)
    random_epochs = [_batch_chi2(labels, np.array_split(rng.permutation(labels),
                                                       len(labels) // 16), classes)
                     for _ in range(200)]
    bound = float(np.percentile(random_epochs, 99))
    mixed = _batch_chi2(labels, _loader_batches(tmp_path, labels, classes), classes)
    assert mixed <= bound, (mixed, bound)
    in_class_order = np.sort(labels)  # what the shards held before the mixed order
    sorted_chi2 = _batch_chi2(labels, _loader_batches(tmp_path, in_class_order, classes),
                              classes)
    assert sorted_chi2 > 3 * bound, (sorted_chi2, bound)


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
