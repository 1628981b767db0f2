"""The data stages' Ray path: shards written by a pool of real Ray actors (on CPUs here),
byte-identical to the in-process writer, resumable, and a GPU study refused on a cluster
without GPUs before any shard is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.cluster import ClusterError
from pipeline.config import DataParams, TokenizerParams
from pipeline.pretrained.tokenizer import SCALE_FILE, small_autoencoder
from pipeline.shard_pool import write_shards_on_ray
from pipeline.shards import LATENT_FIELDS, write_manifest, write_shards
from stages.encode import LatentEncoder
from tests.eval_helpers import image_folder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> LatentEncoder:
    """The encode stage's encoder over a 24-image folder (48 samples with flips), with a
    tiny saved AutoencoderKL."""
    root = tmp_path_factory.mktemp("pool")
    images = image_folder(root / "images")
    small_autoencoder(TokenizerParams(block_out_channels=[8, 16])).save_pretrained(root / "vae")
    (root / "vae" / SCALE_FILE).write_text(json.dumps({"scale_factor": 0.5}))
    data = DataParams(source="imagefolder", path=str(images), eval_path=str(images),
                      hflip=True, shard_size=10)
    return LatentEncoder(data, str(root / "vae"), "", 0.0)


def _write_in_process(out: Path, encoder: LatentEncoder) -> list[dict]:
    """The in-process writer with one torch thread, as each 1-CPU actor has: the thread
    count changes fp32 sums, and so a few fp16 values by one ulp."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return write_shards(out, 48, 10, encoder("cpu"), "fp", 7, "encode", LATENT_FIELDS)
    finally:
        torch.set_num_threads(threads)


def test_ray_actor_pool_writes_the_same_shards_as_in_process(tmp_path, encoder, ray_cluster):
    local = _write_in_process(tmp_path / "local", encoder)
    pooled = write_shards_on_ray(tmp_path / "ray", 48, 10, encoder, "fp", 7, "encode",
                                 LATENT_FIELDS, use_gpu=False, cpus=1.0)
    assert [s["samples"] for s in pooled] == [10, 10, 10, 10, 8]
    assert pooled == local  # names, sample counts and sha256: byte-identical shards
    for s in pooled:
        assert (tmp_path / "ray" / s["name"]).read_bytes() == (
            tmp_path / "local" / s["name"]).read_bytes()
    assert not list((tmp_path / "ray").glob(".tmp-*"))


def test_ray_pool_resumes_keeping_finished_shards(tmp_path, encoder, ray_cluster):
    out = tmp_path / "ray"
    shards = _write_in_process(out, encoder)
    write_manifest(out, {"samples": 48, "shards": shards})
    (out / "shard-000003.tar").unlink()  # as if killed before shard 3 was written
    (out / "shard-000001.tar").write_bytes(b"truncated")  # or while writing shard 1
    kept = {n: (out / n).stat().st_mtime_ns for n in ("shard-000000.tar", "shard-000004.tar")}
    again = write_shards_on_ray(out, 48, 10, encoder, "fp", 7, "encode", LATENT_FIELDS,
                                use_gpu=False, cpus=1.0)
    assert again == shards  # rewritten exactly
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())  # not touched


def test_gpu_study_on_a_cluster_without_gpus_is_refused_before_any_work(tmp_path, encoder,
                                                                        ray_cluster):
    assert ray_cluster.cluster_resources().get("GPU", 0) == 0  # this machine: CPUs only
    out = tmp_path / "ray"
    with pytest.raises(ClusterError, match=r"runtime.use_gpu is true .* no GPU") as err:
        write_shards_on_ray(out, 48, 10, encoder, "fp", 7, "encode", LATENT_FIELDS,
                            use_gpu=True, cpus=1.0)
    assert "runtime.use_gpu: false" in str(err.value)
    assert not out.exists()  # no shard folder, no fingerprint: refused first
    with pytest.raises(ClusterError, match=r"runtime\.cpus_per_worker=64"):
        write_shards_on_ray(out, 48, 10, encoder, "fp", 7, "encode", LATENT_FIELDS,
                            use_gpu=False, cpus=64.0)
    assert not out.exists()
