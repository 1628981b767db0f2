"""Webdataset latent shards: writing (atomic, resumable), the manifest, and the train loader.

Layout of a shard directory::

    shard-000000.tar   samples j in [0, S), S = data.shard_size; key f"{j:09d}"
    shard-000001.tar   ...
    manifest.json      counts, shard list with sha256, latent shape, tokenizer, scale factor
    fingerprint.txt    what produced the shards; other shards are discarded on a rerun

A latent sample holds ``lat.bin`` (posterior mean and std, fp16 [2, C, h, w], raw bytes)
and ``cls`` (label, ASCII), and with an online teacher ``img.bin`` (uint8 [3, H, W]). A
teacher shard with the same name holds ``tok.bin`` ([1+n, T] in the manifest's
``encoding``: fp16, bf16, fp8 or int8, see :func:`encode_tokens`) under the same keys, so
the loader reads both in lockstep. Sample j is source image j // 2, flipped when j is odd
(with data.hflip), else source image j. An empty ``img.bin`` / ``tok.bin`` (a flipped
sample of an online study / of ``mirror`` tokens) is read as sample j - 1's, mirrored.

Loader API (what training uses)::

    loader = make_train_loader(shard_dir, batch_size, rank, world_size, num_workers, seed,
                               shuffle_buffer, teacher_dir)
    batch = next(iter(loader))  # {"latents": f32 [B,C,h,w], "labels": i64 [B],
                                #  "teacher": f32 [B,1+n,T] or None,
                                #  "images": u8 [B,3,H,W] with images=True}

``read_manifest(shard_dir)`` gives ``num_classes``, ``latent_shape`` and ``scale_factor``.
"""

from __future__ import annotations

import json
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info
from tqdm import tqdm

from pipeline.files import file_sha256, write_json

MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.txt"
LATENT_FIELDS, TOKEN_FIELDS = ("cls", "lat.bin"), ("tok.bin",)
_TMP_PREFIX = ".tmp-"


class ShardError(ValueError):
    """A shard directory is unusable; the message names the file and what to do."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_key(j: int) -> str:
    return f"{j:09d}"


def sample_plan(num_images: int, hflip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(source image index [M], flipped [M]) for every sample j; M = N or 2N with flips."""
    if not hflip:
        return np.arange(num_images), np.zeros(num_images, dtype=bool)
    return np.repeat(np.arange(num_images), 2), np.tile([False, True], num_images)


# ----------------------------------------------------------------------------- tar reading


def iter_samples(path: str | os.PathLike, read_data: bool = True
                 ) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {field: bytes}) per sample of a shard at a path or URL, in order.

    Data are read by webdataset (any URL it opens: a path, ``file://``, ``http(s)://``,
    ``gs://``, ``pipe:CMD``); ``read_data=False`` lists a local shard's member names only
    (the encode stage's check of finished shards; fields map to None). Raises ShardError
    naming the shard when it is truncated or not a tar.
    """
    try:
        if read_data:
            for sample in wds.tarfile_samples([{"url": str(path)}]):
                yield sample["__key__"], {k: v for k, v in sample.items()
                                          if not k.startswith("__")}
            return
        with tarfile.open(path) as tar:  # reads headers, seeks over member data
            members = [m for m in tar.getmembers() if m.isreg()]
        if members and members[-1].offset_data + members[-1].size > os.path.getsize(path):
            raise ValueError(f"truncated in member {members[-1].name}")
        names = [m.name for m in members]
    except (tarfile.TarError, OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable shard ({err}); delete it and rerun the stage "
                         "that wrote it") from None
    yield from _group_names(names)


def _group_names(names: list[str]) -> Iterator[tuple[str, dict[str, None]]]:
    """Consecutive member names grouped by webdataset key (folder/stem), as a tar holds them."""
    key, fields = None, {}
    for name in names:
        folder, _, base = name.rpartition("/")
        stem, _, field = base.partition(".")
        member_key = f"{folder}/{stem}" if folder else stem
        if member_key != key:
            if key is not None:
                yield key, fields
            key, fields = member_key, {}
        fields[field] = None
    if key is not None:
        yield key, fields


# ----------------------------------------------------------------------------- writing


def write_shards(
    out_dir: Path,
    num_samples: int,
    shard_size: int,
    encode: Callable[[np.ndarray], list[dict[str, bytes]]],
    fingerprint: str,
    batch: int = 256,
    desc: str = "shards",
    fields: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """Write every missing shard of ``num_samples`` samples; return the shard list.

    ``encode(sample_indices [b])`` returns one dict of byte fields per sample. Shards are
    written by webdataset's ShardWriter under a temporary name and renamed when complete, so
    a killed run leaves only whole shards; a rerun checks the finished ones (keys and
    ``fields`` of every sample) and writes just the missing or damaged ones. ``fingerprint``
    identifies what produced the shards (tokenizer, data params): other shards are removed.
    Returns [{"name", "samples", "sha256"}] for every shard.
    """
    todo = missing_shards(out_dir, num_samples, shard_size, fingerprint, fields)
    done = num_samples - sum(_shard_len(s, shard_size, num_samples) for s in todo)
    with tqdm(total=num_samples, initial=done, desc=desc, unit="sample", mininterval=5) as bar:
        for first, last in _runs(todo):
            _write_run(out_dir, first, last, shard_size, num_samples, encode, batch, bar)
    return shard_list(out_dir, num_samples, shard_size)


def missing_shards(out_dir: Path, num_samples: int, shard_size: int, fingerprint: str,
                   fields: tuple[str, ...] | None = None) -> list[int]:
    """The shard indices still to write: shards of other inputs (``fingerprint``) and
    temporaries of a killed run are removed, finished shards are checked and kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _discard_stale(out_dir, fingerprint)
    return [s for s in range(num_shards(num_samples, shard_size))
            if not _shard_ok(out_dir / shard_name(s), s, shard_size, num_samples, fields)]


def write_shard(out_dir: Path, index: int, shard_size: int, num_samples: int,
                encode: Callable[[np.ndarray], list[dict[str, bytes]]], batch: int) -> int:
    """Write shard ``index`` alone (atomically, as :func:`write_shards` does); its index."""
    _write_run(out_dir, index, index, shard_size, num_samples, encode, batch, None)
    return index


def shard_list(out_dir: Path, num_samples: int, shard_size: int) -> list[dict[str, Any]]:
    """[{"name", "samples", "sha256"}] of every shard, for the manifest."""
    return [{"name": shard_name(s), "samples": _shard_len(s, shard_size, num_samples),
             "sha256": file_sha256(out_dir / shard_name(s))}
            for s in range(num_shards(num_samples, shard_size))]


def _discard_stale(out_dir: Path, fingerprint: str) -> None:
    """Remove temporaries of a killed run, and all shards if they came from other inputs."""
    for tmp in out_dir.glob(f"{_TMP_PREFIX}*"):
        tmp.unlink()
    stamp = out_dir / FINGERPRINT
    if not stamp.exists() or stamp.read_text() != fingerprint:
        for old in [*out_dir.glob("shard-*.tar"), out_dir / MANIFEST]:
            old.unlink(missing_ok=True)
    # Stamp before writing: shards written from now on belong to this fingerprint.
    stamp.write_text(fingerprint)


def _write_run(out_dir: Path, first: int, last: int, shard_size: int, total: int,
               encode: Callable, batch: int, bar: tqdm | None) -> None:
    """Shards first..last (consecutive) through one ShardWriter; rename each when closed."""

    def publish(tmp_name: str) -> None:
        index = int(Path(tmp_name).stem.rsplit("-", 1)[1])
        os.replace(tmp_name, out_dir / shard_name(index))

    start, stop = first * shard_size, min((last + 1) * shard_size, total)
    pattern = str(out_dir).replace("%", "%%") + f"/{_TMP_PREFIX}shard-%06d.tar"
    sink = wds.ShardWriter(pattern, maxcount=shard_size, maxsize=float("inf"), post=publish,
                           start_shard=first, verbose=0, mtime=0)
    try:
        # ShardWriter rolls over every shard_size. Batches never straddle two shards: a
        # shard's bytes must not depend on which writer wrote it (this process or one of
        # pipeline.shard_pool's actors), and a batch's size can change fp32 results.
        for s0 in range(start, stop, shard_size):
            end = min(s0 + shard_size, stop)
            for b0 in range(s0, end, batch):
                idx = np.arange(b0, min(b0 + batch, end))
                for j, sample in zip(idx, encode(idx)):
                    sink.write({"__key__": sample_key(j), **sample})
                if bar is not None:
                    bar.update(len(idx))
    except BaseException:
        sink.post = None  # closing must not publish a partial shard under its final name
        sink.close()
        for s in range(first, last + 1):  # this run's only: other writers may share out_dir
            (out_dir / f"{_TMP_PREFIX}{shard_name(s)}").unlink(missing_ok=True)
        raise
    sink.close()


def _runs(indices: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs (first, last) of sorted indices."""
    for i, s in enumerate(indices):
        if i == 0 or s != indices[i - 1] + 1:
            first = s
        if i == len(indices) - 1 or indices[i + 1] != s + 1:
            yield first, s


def _shard_ok(path: Path, s: int, shard_size: int, total: int,
              fields: tuple[str, ...] | None) -> bool:
    """A finished shard holds exactly its keys, each with ``fields`` (names only read)."""
    if not path.exists():
        return False
    expected = [sample_key(j) for j in range(s * shard_size, min((s + 1) * shard_size, total))]
    try:
        found = list(iter_samples(path, read_data=False))
    except (ShardError, ValueError, UnicodeDecodeError):
        return False
    if [k for k, _ in found] != expected:
        return False
    return fields is None or all(tuple(sorted(f)) == tuple(sorted(fields)) for _, f in found)


def num_shards(num_samples: int, shard_size: int) -> int:
    """How many shards ``num_samples`` fill at ``shard_size`` each (the last may be short)."""
    return -(-num_samples // shard_size)


def _shard_len(s: int, shard_size: int, total: int) -> int:
    return min((s + 1) * shard_size, total) - s * shard_size


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(out_dir / MANIFEST, manifest)


def read_manifest(shard_dir: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """The manifest of a shard directory; with ``verify`` every shard's sha256 is checked.

    Keys: ``samples``, ``shards`` [{name, samples, sha256}], and for latents
    ``num_classes``, ``classes``, ``latent_shape`` [C, h, w], ``scale_factor``,
    ``tokenizer``, ``counts_per_class``, ``skipped``; for teacher tokens ``token_shape``.
    """
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise ShardError(f"{path}: missing; run the stage that writes it (`dvc repro encode` "
                         "for latents, `dvc repro teacher` for teacher tokens) first")
    manifest = json.loads(path.read_text())
    for shard in manifest["shards"]:
        file = Path(shard_dir) / shard["name"]
        if not file.exists():
            raise ShardError(f"{file}: listed in {path} but missing; rerun `dvc repro`")
        if verify and file_sha256(file) != shard["sha256"]:
            raise ShardError(f"{file}: sha256 does not match {path} (corrupt or replaced); "
                             "delete it and rerun the stage that wrote it (`dvc repro`)")
    return manifest


def latent_fields(mean: np.ndarray, std: np.ndarray, label: int) -> dict[str, bytes]:
    """One sample's byte fields: fp16 [2, C, h, w] posterior and the label."""
    return {"lat.bin": np.stack([mean, std]).astype(np.float16).tobytes(),
            "cls": str(int(label)).encode()}


def image_fields(image: np.ndarray | torch.Tensor | None) -> dict[str, bytes]:
    """One sample's pixels for an online teacher: uint8 [3, H, W] raw; None: an empty
    field, read as the previous sample's image flipped left-right (exact)."""
    return {"img.bin": b"" if image is None else np.asarray(image, np.uint8).tobytes()}


def check_pairs(shard_size: int, why: str) -> None:
    """Refuse an odd data.shard_size when flipped samples read their unflipped pair
    (sample j - 1) from the same shard."""
    if shard_size % 2:
        raise ShardError(f"data.shard_size {shard_size}: must be even with data.hflip and "
                         f"{why} (a flipped sample is read from its pair in the same shard)")


def check_teacher_data(manifest: dict[str, Any], location: str | os.PathLike, mode: str,
                       encoding: str = "fp16", mirror: bool = False) -> None:
    """Refuse teacher data that is not what params ask for, naming the stage to run.

    ``manifest``: data/teacher's (``mode``: ``cached`` with token shards, or ``online``
    with none; older manifests: cached fp16). For ``online`` the latent shards' pixels are
    checked by :func:`check_pixels`.
    """
    have = (manifest.get("mode", "cached"), manifest.get("encoding", "fp16"),
            bool(manifest.get("mirror", False)))
    if mode == "cached" and (have[0] != "cached" or not manifest["shards"]):
        raise ShardError(f"{location}: no teacher token shards (written for teacher.mode "
                         f"{have[0]}) but teacher.mode is cached; run `dvc repro teacher`")
    if mode == "cached" and have[1:] != (encoding, mirror):
        raise ShardError(f"{location}: tokens stored as encoding {have[1]}, mirror "
                         f"{have[2]}, but params say teacher.encoding {encoding}, "
                         f"teacher.mirror {mirror}; run `dvc repro teacher`")
    if mode == "online" and have[0] != "online":
        raise ShardError(f"{location}: written for teacher.mode {have[0]} but teacher.mode "
                         "is online; run `dvc repro teacher`")


def check_pixels(manifest: dict[str, Any], location: str | os.PathLike) -> list[int]:
    """The latent shards' pixel shape [3, H, W] for an online teacher; refuses shards
    written without pixels, naming the stage to run."""
    if not manifest.get("pixels"):
        raise ShardError(f"{location}: the latent shards carry no image pixels, which "
                         "teacher.mode online needs; run `dvc repro encode` (it stores them "
                         "when teacher.mode is online)")
    return list(manifest["pixels"])


def token_fields(tokens: np.ndarray | torch.Tensor | None, encoding: str = "fp16"
                 ) -> dict[str, bytes]:
    """One sample's teacher tokens [1+n, T] in ``encoding`` (:func:`encode_tokens`); None:
    an empty field, read as the previous sample's tokens mirrored (``mirror`` shards)."""
    return {"tok.bin": b"" if tokens is None else encode_tokens(tokens, encoding)}


# ----------------------------------------------------------------------------- token codec
# Teacher tokens are stored per sample as ``tok.bin`` in one of these encodings (the teacher
# manifest's ``encoding``); the teacher stage encodes with :func:`encode_tokens`, the loader
# decodes a batch with :func:`decode_tokens`. An empty ``tok.bin`` (``mirror`` manifests)
# means: the previous sample's tokens with the patch grid mirrored (:func:`mirror_tokens`).
TOKEN_ENCODINGS = ("fp16", "bf16", "fp8", "int8")
_FP8_MAX = 448.0  # torch.float8_e4m3fn's largest finite value (the cast saturates there)


def token_bytes(shape: tuple[int, int] | list[int], encoding: str) -> int:
    """Bytes of one sample's ``tok.bin`` for tokens [1+n, T]: 2 per value for fp16/bf16, 1
    for fp8, 1 per value + an fp16 scale per token for int8."""
    n, dim = shape
    return {"fp16": 2 * n * dim, "bf16": 2 * n * dim, "fp8": n * dim,
            "int8": n * dim + 2 * n}[_check_encoding(encoding)]


def encode_tokens(tokens: np.ndarray | torch.Tensor, encoding: str = "fp16") -> bytes:
    """float tokens [1+n, T] -> one sample's ``tok.bin`` bytes in ``encoding``.

    int8: per token (row) absmax scale s = max|x| / 127 (fp16, stored first), values
    round(x / s) as int8. fp8: torch.float8_e4m3fn, saturated at +-448.
    """
    x = torch.as_tensor(tokens, dtype=torch.float32).cpu()
    encoding = _check_encoding(encoding)
    if encoding == "fp16":
        return x.half().numpy().tobytes()
    if encoding == "bf16":
        return x.bfloat16().view(torch.int16).numpy().tobytes()
    if encoding == "fp8":
        return x.clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8
                                                                          ).numpy().tobytes()
    scale = (x.abs().amax(dim=-1, keepdim=True) / 127.0).half()
    safe = scale.float().clamp_min(torch.finfo(torch.float16).tiny)  # an all-zero token: 0
    q = (x / safe).round().clamp(-127, 127).to(torch.int8)
    return scale.numpy().tobytes() + q.numpy().tobytes()


def decode_tokens(data: bytes, count: int, shape: tuple[int, int] | list[int],
                  encoding: str = "fp16") -> torch.Tensor:
    """``count`` samples' ``tok.bin`` bytes, concatenated -> float32 [count, 1+n, T]."""
    n, dim = shape
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if raw.numel() != count * token_bytes(shape, encoding):
        raise ShardError(f"teacher tokens: {raw.numel()} bytes for {count} samples of "
                         f"{n}x{dim} {encoding}; the shards were written with another "
                         "encoding or shape: rerun `dvc repro teacher`")
    if encoding == "fp16":
        return raw.view(torch.float16).reshape(count, n, dim).float()
    if encoding == "bf16":
        return raw.view(torch.bfloat16).reshape(count, n, dim).float()
    if encoding == "fp8":
        return raw.view(torch.float8_e4m3fn).reshape(count, n, dim).float()
    per = raw.reshape(count, -1)
    scale = per[:, : 2 * n].flatten().view(torch.float16).reshape(count, n, 1).float()
    q = per[:, 2 * n :].flatten().view(torch.int8).reshape(count, n, dim).float()
    return q * scale


def mirror_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Tokens [B, 1+g*g, T] of images -> an estimate of their mirrored images' tokens: the
    g x g patch grid flipped left-right (row-major patches), [cls] kept."""
    b, n, dim = tokens.shape
    if n != 1 + grid * grid:
        raise ValueError(f"{n} tokens are not [cls] + a {grid}x{grid} grid")
    patches = tokens[:, 1:].reshape(b, grid, grid, dim).flip(2).reshape(b, grid * grid, dim)
    return torch.cat([tokens[:, :1], patches], dim=1)


def _check_encoding(encoding: str) -> str:
    if encoding not in TOKEN_ENCODINGS:
        raise ShardError(f"teacher token encoding {encoding!r}: must be one of "
                         f"{', '.join(TOKEN_ENCODINGS)}")
    return encoding


# ----------------------------------------------------------------------------- loader


def assign_shards(shards: list[str], slot: int, slots: int) -> list[tuple[str, int, int]]:
    """(shard, part, parts) read by one of ``slots`` readers: together, every sample once.

    With at least as many shards as readers, whole shards are dealt round-robin. With fewer,
    readers share a shard and each keeps the samples at positions ``part`` mod ``parts``.
    """
    if not 0 <= slot < slots:
        raise ValueError(f"slot {slot} outside 0..{slots - 1} (rank must be < world_size)")
    if len(shards) >= slots:
        return [(name, 0, 1) for name in shards[slot::slots]]
    i = slot % len(shards)
    parts = len(range(i, slots, len(shards)))
    return [(shards[i], slot // len(shards), parts)]


def is_url(location: str | os.PathLike) -> bool:
    """Whether a shard location is a URL (``file://``, ``http(s)://``, ``gs://``, ``pipe:``)
    rather than a folder path."""
    return isinstance(location, str) and ("://" in location or location.startswith("pipe:"))


def shard_url(location: str | os.PathLike, name: str) -> str:
    """The URL (or path) of file ``name`` in a shard location.

    ``location``: a folder path, a folder URL (``file:///srv/shards``,
    ``https://host/shards``, ``gs://bucket/shards``), or a template with ``{path}`` for the
    file name (``pipe:aws s3 cp s3://bucket/shards/{path} -``).
    """
    location = str(location)
    if "{path}" in location:
        return location.replace("{path}", name)
    return f"{location.rstrip('/')}/{name}"


def read_manifest_at(location: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard location: a folder (checked as :func:`read_manifest` does) or
    a URL, read through webdataset's ``gopen``. Raises ShardError naming the URL when it
    cannot be read or is not a manifest."""
    if not is_url(location):
        return read_manifest(location)
    url = shard_url(location, MANIFEST)
    try:
        with wds.gopen(url) as stream:
            manifest = json.loads(stream.read())
        if not {"shards", "samples"} <= set(manifest):
            raise ValueError("no 'shards' or 'samples' in it")
    except Exception as err:  # any opener's failure: missing file, HTTP error, bad command
        raise ShardError(f"{url}: cannot read a shard manifest there ({err}); copy the "
                         "shard folder (with its manifest.json) to that location or fix "
                         "the location") from None
    return manifest


class LatentStream:
    """Batches {latents [B,C,h,w], labels [B], teacher [B,1+n,T] or None}; endless by default.

    A webdataset pipeline: this slot's shards of each epoch -> samples (webdataset's tar
    reader, any URL it opens) -> ``wds.shuffle`` -> ``wds.batched``. The slots (Ray worker x
    DataLoader worker) share one seeded shard permutation per epoch and split it with
    :func:`assign_shards`, so every sample is read exactly once per epoch across all of
    them (``wds.split_by_node`` / ``split_by_worker`` slice one endless stream instead: an
    epoch splits unevenly when the shards are not a multiple of the slots, and a slot past
    the last shard would wait forever). Latents are drawn from the stored posterior,
    ``(mean + std * eps) * scale_factor``, fresh noise every time a sample is read.

    ``manifest`` / ``teacher_manifest``: the manifests, when the caller has read them (a
    Ray worker gets them from the driver instead of reading the location again).
    ``teacher_format``: (encoding, mirror) that params ask for; tokens stored otherwise are
    refused. ``images``: also yield the pixels (``img.bin``) for an online teacher.
    An empty ``tok.bin`` / ``img.bin`` stands for the previous sample's, mirrored (the
    writers store each image's flipped copy so, and keep the pair in one shard).
    """

    def __init__(self, shard_dir: str | os.PathLike, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000,
                 teacher_dir: str | os.PathLike | None = None, epochs: int | None = None,
                 with_keys: bool = False, manifest: dict[str, Any] | None = None,
                 teacher_manifest: dict[str, Any] | None = None,
                 teacher_format: tuple[str, bool] | None = None, images: bool = False):
        manifest = manifest or read_manifest_at(shard_dir)
        self.shards = [s["name"] for s in manifest["shards"]]
        self.urls = {n: shard_url(shard_dir, n) for n in self.shards}
        self.shape = tuple(manifest["latent_shape"])
        self.scale = float(manifest["scale_factor"])
        self.token_urls, self.token_shape = {}, None
        self.pixels = check_pixels(manifest, shard_dir) if images else None
        if teacher_dir:
            tokens = teacher_manifest or read_manifest_at(teacher_dir)
            if teacher_format:
                check_teacher_data(tokens, teacher_dir, "cached", *teacher_format)
            if [s["name"] for s in tokens["shards"]] != self.shards or (
                    tokens["samples"] != manifest["samples"]):
                raise ShardError(f"{teacher_dir}: its shards do not match {shard_dir} "
                                 "(another encode run?); rerun `dvc repro teacher`")
            self.token_urls = {n: shard_url(teacher_dir, n) for n in self.shards}
            self.token_shape = tuple(tokens["token_shape"])
            self.encoding = tokens.get("encoding", "fp16")
            self.grid = int(tokens.get("grid", round((self.token_shape[0] - 1) ** 0.5)))
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in 0..world_size-1 ({world_size})")
        self.batch_size, self.rank, self.world = batch_size, rank, world_size
        self.seed, self.buffer, self.epochs = seed, max(1, shuffle_buffer), epochs
        self.with_keys = with_keys

    def pipeline(self) -> wds.DataPipeline:
        """slot's shards -> samples -> ``wds.shuffle`` -> ``wds.batched`` (collated here)."""
        return wds.DataPipeline(self._slot_shards, self._samples, self._shuffle, self._batch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.pipeline())

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + wid, self.world * workers

    def _slot_shards(self) -> Iterator[tuple[str, int, int]]:
        slot, slots = self._slot()
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            order = list(self.shards)
            random.Random(self.seed * 100_003 + epoch).shuffle(order)  # same on every slot
            yield from assign_shards(order, slot, slots)
            epoch += 1

    def _samples(self, shards: Iterator[tuple[str, int, int]]) -> Iterator[tuple]:
        """(key, posterior bytes, label, (token bytes, mirrored) or None, (pixel bytes,
        flipped) or None) of this slot's part of each shard, latents and teacher tokens
        read in lockstep by webdataset's tar reader. An empty field takes the previous
        sample's bytes, marked to be mirrored."""
        for name, part, parts in shards:
            lat = wds.tarfile_samples([{"url": self.urls[name]}])
            tok = (wds.tarfile_samples([{"url": self.token_urls[name]}])
                   if self.token_urls else None)
            tokens = pixels = None
            for pos, sample in enumerate(lat):
                key = sample["__key__"]
                if tok:
                    tokens = _or_previous(self._tokens(next(tok, {}), key, name), tokens, key)
                if self.pixels:
                    pixels = _or_previous(sample["img.bin"], pixels, key)
                if pos % parts == part:
                    yield key, sample["lat.bin"], int(sample["cls"]), tokens, pixels

    def _tokens(self, sample: dict, key: str, name: str) -> bytes:
        if sample.get("__key__") != key:
            raise ShardError(f"{self.token_urls[name]}: key {sample.get('__key__')} where "
                             f"{key} was expected; rerun `dvc repro teacher`")
        return sample["tok.bin"]

    def _shuffle(self, samples: Iterator[tuple]) -> Iterator[tuple]:
        slot, slots = self._slot()
        buffer = process_buffer(self.buffer, slots // self.world)  # this worker's processes
        rng = random.Random(self.seed * 100_003 + 7919 * slot)
        return wds.shuffle(buffer, buffer, rng=rng)(samples)

    def _batch(self, samples: Iterator[tuple]) -> Iterator[dict[str, Any]]:
        """Full batches; in epoch mode the remainder too."""
        slot, _ = self._slot()
        gen = torch.Generator().manual_seed(self.seed * 100_003 + 7919 * slot + 1)
        return wds.batched(self.batch_size, lambda items: self.collate(items, gen),
                           partial=True)(samples)

    def collate(self, items: list[tuple], gen: torch.Generator) -> dict[str, Any]:
        """Raw fp16 bytes -> float32 tensors; latents sampled from the posterior."""
        n = len(items)
        post = np.frombuffer(bytearray(b"".join(it[1] for it in items)), np.float16)
        post = torch.from_numpy(post.reshape(n, 2, *self.shape)).float()
        eps = torch.randn(post[:, 0].shape, generator=gen)
        latents = torch.addcmul(post[:, 0], post[:, 1], eps).mul_(self.scale)
        out: dict[str, Any] = {"latents": latents,
                               "labels": torch.tensor([it[2] for it in items]),
                               "teacher": None}
        if self.token_shape:
            tokens = decode_tokens(b"".join(it[3][0] for it in items), n, self.token_shape,
                                   self.encoding)
            mirrored = torch.tensor([it[3][1] for it in items])
            if mirrored.any():
                tokens[mirrored] = mirror_tokens(tokens[mirrored], self.grid)
            out["teacher"] = tokens
        if self.pixels:
            pixels = np.frombuffer(bytearray(b"".join(it[4][0] for it in items)), np.uint8)
            images = torch.from_numpy(pixels.reshape(n, *self.pixels))
            flipped = torch.tensor([it[4][1] for it in items])
            images[flipped] = images[flipped].flip(-1)
            out["images"] = images
        if self.with_keys:
            out["keys"] = [it[0] for it in items]
        return out


def process_buffer(shuffle_buffer: int, loader_processes: int) -> int:
    """Samples one loader process holds to shuffle: ``train.shuffle_buffer`` is a Ray
    worker's, split among its DataLoader processes, so a worker's memory for it does not
    grow with ``runtime.loader_workers`` (paper profile, online pixels: ~115 KB a sample)."""
    return max(1, -(-shuffle_buffer // max(1, loader_processes)))


def make_train_loader(shard_dir: str | os.PathLike, batch_size: int, rank: int = 0,
                      world_size: int = 1, num_workers: int = 1, seed: int = 0,
                      shuffle_buffer: int = 1000, teacher_dir: str | os.PathLike | None = None,
                      epochs: int | None = None, with_keys: bool = False,
                      manifest: dict[str, Any] | None = None,
                      teacher_manifest: dict[str, Any] | None = None,
                      teacher_format: tuple[str, bool] | None = None,
                      images: bool = False) -> wds.WebLoader:
    """Batches of latents f32 [B,C,h,w], labels i64 [B], teacher f32 [B,1+n,T] or None.

    ``shard_dir`` / ``teacher_dir``: shard locations, folders or URLs (:func:`shard_url`).
    ``rank``/``world_size``: this Ray (or DDP) worker; ``num_workers`` DataLoader processes
    each read their own shards. ``epochs=None`` iterates forever (step-based training);
    ``epochs=k`` stops after k passes, every sample once per pass across all workers, the
    last batch of a worker possibly short. ``with_keys`` adds ``keys`` (sample keys).
    ``teacher_format`` (encoding, mirror): refuse tokens stored otherwise. ``images``: add
    ``images`` (uint8 [B, 3, H, W], the pixels an online teacher reads).
    """
    stream = LatentStream(shard_dir, batch_size, rank, world_size, seed, shuffle_buffer,
                          teacher_dir, epochs, with_keys, manifest, teacher_manifest,
                          teacher_format, images)
    return wds.WebLoader(stream.pipeline(), batch_size=None, num_workers=num_workers,
                         persistent_workers=num_workers > 0 and epochs is None,
                         collate_fn=_identity)


def _or_previous(data: bytes, previous: tuple[bytes, bool] | None, key: str
                 ) -> tuple[bytes, bool]:
    """(bytes, mirror?) of a field: its own, or, when empty, the previous sample's."""
    if data:
        return data, False
    if previous is None or previous[1]:
        raise ShardError(f"sample {key}: an empty field whose previous sample in the shard "
                         "has none to mirror; rerun the stage that wrote the shards")
    return previous[0], True


def _identity(batch: Any) -> Any:
    return batch
