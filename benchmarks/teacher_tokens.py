"""REPA teacher data at ImageNet scale: storage, accuracy and loader speed of each mode.

    python benchmarks/teacher_tokens.py [--samples 256] [--teacher-steps 300]
                                        [--teacher-dir /tmp/gat-standin-teacher]

1. Targets (CPU stand-in): the embedded profile's stand-in teacher (a Dinov2Model, 96-d,
   4 layers, 8 px patches at 32 px: 17 tokens) trained as the ``teacher_model`` stage
   trains it (saved to ``--teacher-dir`` and reused) on fashion-mnist. On
   ``--quality-samples`` training images: each encoding's decoded tokens against the
   float32 tokens (relative L2 per sample, cosine per token: what REPA's loss compares),
   and the mirrored grid of an image's tokens against its flipped image's own tokens.
2. Online cost: the stand-in's forward on the embedded batch (32 images) on this CPU,
   against the embedded study's recorded train step (results/train/*/metrics.json); and
   DINOv2-B's forward GFLOPs at 224 px (multiply-add = 1, gat/flops.py) on a randomly
   initialised transformers Dinov2Model built from its config (no download).
3. Loader: synthetic shards with ImageNet's shapes (latents 4x32x32 fp16 posterior,
   tokens 257x768 in each encoding, or 3x256x256 uint8 pixels for online) written by the
   pipeline's writer, read through ``make_train_loader`` (webdataset, decode, collate; one
   process), against reading the same tar files as bytes in the same run. The files were
   just written: they are in the page cache (dropping it needs root), so both rates are
   memory-to-process rates, not disk rates.
Prints tables and the 1-minute load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import shards as S  # noqa: E402 (after the path: run as a script)

DINO_B = (257, 768)  # DINOv2-B at 224 px: [cls] + 16x16 patches, 768-d
LATENT = (4, 32, 32)  # SD-VAE latents of 256 px images
PIXELS = (3, 256, 256)
IMAGENET = 1_281_167


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


# ----------------------------------------------------------------------------- 1. targets


def stand_in_teacher(folder: Path, steps: int):
    """The embedded profile's stand-in teacher, trained once and saved to ``folder``."""
    from pipeline.config import load_params
    from pipeline.data import open_split
    from pipeline.pretrained.common import dataset_sampler
    from pipeline.pretrained.teacher import Teacher, load_teacher, train_teacher

    params = load_params(REPO / "profiles" / "embedded.yaml")
    if not (folder / "config.json").exists():
        train = open_split(params.data, "train")
        t0 = time.perf_counter()
        cfg = dataclasses.replace(params.teacher, steps=steps)
        model, _ = train_teacher(cfg, params.data.resolution, len(train.classes),
                                 dataset_sampler(train, 0), 0)
        model.save_pretrained(folder)
        print(f"stand-in teacher: {steps} steps in {time.perf_counter() - t0:.0f} s ({load()})")
    teacher: Teacher = load_teacher(str(folder))
    return teacher, params


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of |a - b| / |b| ([B, N, T])."""
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples and tokens of cos(a_i, b_i): 1 - REPA's loss between them."""
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


def targets(teacher, params, samples: int) -> dict:
    from pipeline.data import open_split

    images = open_split(params.data, "train").load(np.arange(samples))
    own, flipped = teacher.tokens(images), teacher.tokens(images.flip(-1))
    shape = tuple(own.shape[1:])
    rows = {}
    for enc in S.TOKEN_ENCODINGS:
        dec = S.decode_tokens(b"".join(S.encode_tokens(t, enc) for t in own), samples, shape,
                              enc)
        rows[enc] = {"rel_l2": rel_l2(dec, own), "cos": cosine(dec, own)}
        mirrored = S.mirror_tokens(dec, teacher.grid)
        rows[enc + "+mirror"] = {"rel_l2": rel_l2(mirrored, flipped),
                                 "cos": cosine(mirrored, flipped)}
    # Scale of the mirror's error: how far an image's tokens are from its flip's at all.
    rows["(no mirror: own vs flipped)"] = {"rel_l2": rel_l2(own, flipped),
                                          "cos": cosine(own, flipped)}
    print(f"\n1. REPA targets, stand-in teacher {shape[0]}x{shape[1]} (grid "
          f"{teacher.grid}), {samples} fashion-mnist images, vs float32 tokens (for "
          "+mirror: vs the flipped image's own tokens)")
    print(f"{'encoding':<28}{'rel L2':>10}{'cos':>10}")
    for name, r in rows.items():
        print(f"{name:<28}{r['rel_l2']:>10.4f}{r['cos']:>10.4f}")
    return {"shape": list(shape), "rows": rows}


# ----------------------------------------------------------------------------- 2. online cost


def online_cost(teacher) -> dict:
    from transformers import Dinov2Config, Dinov2Model

    from gat.flops import counted

    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    teacher.tokens(images)  # warm-up
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        teacher.tokens(images)
        times.append(time.perf_counter() - t0)
    step = [json.loads(p.read_text()).get("images_per_s_per_worker")
            for p in (REPO / "results" / "train").glob("*/*/seed0/metrics.json")]
    step_s = {p: 32 / r for p, r in zip(sorted((REPO / "results" / "train").glob(
        "*/*/seed0/metrics.json")), step) if r}
    torch.manual_seed(0)
    dino = Dinov2Model(Dinov2Config(image_size=224)).eval()  # DINOv2-B's architecture
    with torch.no_grad():
        _, gmac = counted(dino, pixel_values=torch.zeros(1, 3, 224, 224))
    params_m = sum(p.numel() for p in dino.parameters()) / 1e6
    out = {"standin_forward_s_batch32": statistics.median(times),
           "embedded_step_s_batch32": {str(p.parent.parent.parent.name + "/" +
                                           p.parent.parent.name): s
                                       for p, s in step_s.items()},
           "dinov2b_gmac_224": gmac, "dinov2b_params_m": params_m}
    print(f"\n2. Online teacher: stand-in forward, batch 32, this CPU: "
          f"{out['standin_forward_s_batch32'] * 1e3:.1f} ms (median of 7, {load()}); the "
          "embedded study's recorded step times at batch 32 (loader + step, when it ran): "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in out["embedded_step_s_batch32"].items()))
    print(f"   DINOv2-B (random init, {params_m:.1f} M params) forward at 224 px: "
          f"{gmac:.1f} GMAC per image ({2 * gmac:.1f} GFLOP)")
    return out


# ----------------------------------------------------------------------------- 3. loader


def write_case(folder: Path, samples: int, shard: int, encoding: str | None, mirror: bool,
               pixels: bool) -> tuple[Path, Path | None, int]:
    """Latent shards (with pixels for online) and token shards of one case; returns the
    folders and the bytes per sample on disk (tar files / samples)."""
    rng = np.random.default_rng(0)
    tokens = torch.randn(8, *DINO_B)
    tokens[:, :, :4] *= 20  # a few outlier channels, as DINOv2 has
    image = rng.integers(0, 256, PIXELS, dtype=np.uint8)
    post = rng.normal(0, 1, LATENT)

    def latents(idx):
        out = [S.latent_fields(post, np.abs(post), int(j) % 1000) for j in idx]
        if pixels:
            for f, j in zip(out, idx):
                f.update(S.image_fields(None if j % 2 else image))
        return out

    lat = folder / "lat"
    shards = S.write_shards(lat, samples, shard, latents, "bench", desc="latents")
    S.write_manifest(lat, {"samples": samples, "shards": shards, "num_classes": 1000,
                           "latent_shape": list(LATENT), "scale_factor": 0.18215,
                           "pixels": list(PIXELS) if pixels else None})
    size = sum(p.stat().st_size for p in lat.glob("*.tar"))
    if encoding is None:
        return lat, None, size // samples
    tok = folder / "tok"
    encoded = [S.encode_tokens(t, encoding) for t in tokens]
    tshards = S.write_shards(tok, samples, shard, lambda idx: [
        {"tok.bin": b"" if mirror and j % 2 else encoded[j % 8]} for j in idx], "bench",
        desc=encoding)
    S.write_manifest(tok, {"samples": samples, "shards": tshards, "mode": "cached",
                           "encoding": encoding, "mirror": mirror,
                           "token_shape": list(DINO_B), "grid": 16})
    size += sum(p.stat().st_size for p in tok.glob("*.tar"))
    return lat, tok, size // samples


def raw_rate(folders: list[Path], samples: int) -> float:
    """Samples/s reading every tar file of the case as bytes (1 MiB reads)."""
    t0, total = time.perf_counter(), 0
    for folder in folders:
        for path in sorted(folder.glob("*.tar")):
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
    return samples / (time.perf_counter() - t0)


def loader_rate(lat: Path, tok: Path | None, encoding: str | None, mirror: bool,
                pixels: bool, samples: int) -> float:
    t0, n = time.perf_counter(), 0
    for batch in S.make_train_loader(lat, 64, num_workers=0, epochs=1, shuffle_buffer=64,
                                     teacher_dir=tok, images=pixels,
                                     teacher_format=(encoding, mirror) if tok else None):
        n += batch["latents"].shape[0]
    assert n == samples
    return samples / (time.perf_counter() - t0)


def loader(samples: int, rounds: int) -> list[dict]:
    cases = [(e, False, False) for e in S.TOKEN_ENCODINGS] + [
        ("int8", True, False), ("fp8", True, False), (None, False, True), (None, False, False)]
    rows = []
    print(f"\n3. Loader, {samples} samples per case, ImageNet shapes, one process, files in "
          f"page cache ({load()})")
    print(f"{'case':<22}{'KB/sample':>10}{'raw s/s':>10}{'loader s/s':>11}{'ratio':>7}"
          f"{'ImageNet x2 GB':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for enc, mirror, pixels in cases:
            name = ("online pixels" if pixels else "latents only" if enc is None
                    else enc + ("+mirror" if mirror else ""))
            folder = Path(tmp) / name.replace(" ", "_")
            lat, tok, size = write_case(folder, samples, 64, enc, mirror, pixels)
            folders = [lat] + ([tok] if tok else [])
            raw, got = [], []
            for _ in range(rounds):  # alternate: the machine's load hits both alike
                raw.append(raw_rate(folders, samples))
                got.append(loader_rate(lat, tok, enc, mirror, pixels, samples))
            r, g = statistics.median(raw), statistics.median(got)
            rows.append({"case": name, "bytes_per_sample": size, "raw_samples_s": r,
                         "loader_samples_s": g, "ratio": g / r,
                         "imagenet_gb": size * 2 * IMAGENET / 1e9})
            print(f"{name:<22}{size / 1e3:>10.1f}{r:>10.0f}{g:>11.0f}{g / r:>7.3f}"
                  f"{size * 2 * IMAGENET / 1e9:>16.0f}")
            for f in folders:  # keep /tmp small
                for p in f.glob("*"):
                    p.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="per loader case")
    parser.add_argument("--quality-samples", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--teacher-dir", type=Path, default=Path("/tmp/gat-standin-teacher"))
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"start ({load()})")
    print("storage per sample, tok.bin only (bytes): " + ", ".join(
        f"{e} {S.token_bytes(DINO_B, e)} (stand-in 17x96: {S.token_bytes((17, 96), e)})"
        for e in S.TOKEN_ENCODINGS))
    teacher, params = stand_in_teacher(args.teacher_dir, args.teacher_steps)
    out = {"targets": targets(teacher, params, args.quality_samples),
           "online": online_cost(teacher), "loader": loader(args.samples, args.rounds)}
    print(f"end ({load()})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
