"""Teacher token storage: each encoding's round trip, the mirrored grid, the loader's decode
(mirror, pixels of an online teacher) and its refusals of data that does not fit params."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.shards import (
    TOKEN_ENCODINGS,
    ShardError,
    check_teacher_data,
    decode_tokens,
    encode_tokens,
    image_fields,
    latent_fields,
    make_train_loader,
    mirror_tokens,
    token_bytes,
    token_fields,
    write_manifest,
    write_shards,
)

# Relative L2 error each encoding must stay under (bits of mantissa: fp16 10, bf16 7,
# fp8 e4m3 3; int8 with an absmax scale per token: rounding error max|x| / (127 sqrt 12)
# per value, against an rms ~12x smaller than max|x| with the outlier channels below).
TOLERANCE = {"fp16": 1e-3, "bf16": 6e-3, "fp8": 5e-2, "int8": 2.5e-2}


def dinov2_like(n: int = 17, dim: int = 96, seed: int = 0) -> torch.Tensor:
    """Tokens [n, dim] with DINOv2's look: Gaussian, a few outlier channels ~30x larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    x[:, :3] *= 30.0
    return x


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("encoding", TOKEN_ENCODINGS)
def test_each_encoding_round_trips_within_its_tolerance(encoding):
    x = dinov2_like()
    data = encode_tokens(x, encoding)
    assert len(data) == token_bytes(x.shape, encoding)
    back = decode_tokens(data, 1, x.shape, encoding)[0]
    err = rel_l2(back, x)
    assert err < TOLERANCE[encoding]
    cos = torch.nn.functional.cosine_similarity(back, x, dim=-1)
    assert cos.min() > 1 - 2 * TOLERANCE[encoding]
    if encoding != "fp16":  # lossier than fp16, but not lossless: the codec really ran
        assert err > rel_l2(decode_tokens(encode_tokens(x), 1, x.shape)[0], x)


def test_the_tolerances_catch_a_wrong_decode():
    """bf16 bytes read as fp16 have the right size but are garbage: far over tolerance;
    a size mismatch is refused naming the stage to rerun."""
    x = dinov2_like()
    wrong = decode_tokens(encode_tokens(x, "bf16"), 1, x.shape, "fp16")[0]
    assert not rel_l2(wrong.nan_to_num(), x) < TOLERANCE["bf16"]
    with pytest.raises(ShardError, match="dvc repro teacher"):
        decode_tokens(encode_tokens(x, "int8"), 1, x.shape, "fp8")


def test_int8_scales_per_token_and_keeps_zero_tokens():
    x = dinov2_like()
    x[0] *= 1e-3  # a small token keeps its own precision (its own scale)
    x[1] = 0.0
    back = decode_tokens(encode_tokens(x, "int8"), 1, x.shape, "int8")[0]
    assert rel_l2(back[0], x[0]) < TOLERANCE["int8"]
    assert torch.equal(back[1], torch.zeros_like(back[1]))


def test_mirror_flips_the_patch_grid_and_keeps_cls():
    grid, dim = 3, 2
    tokens = torch.zeros(1, 1 + grid * grid, dim)
    tokens[0, 0] = -1.0  # [cls]
    for r in range(grid):
        for c in range(grid):
            tokens[0, 1 + r * grid + c] = torch.tensor([r, c])
    out = mirror_tokens(tokens, grid)
    assert torch.equal(out[0, 0], tokens[0, 0])
    for r in range(grid):
        for c in range(grid):
            assert out[0, 1 + r * grid + c].tolist() == [r, grid - 1 - c]
    assert torch.equal(mirror_tokens(out, grid), tokens)  # an involution
    with pytest.raises(ValueError, match="4x4"):
        mirror_tokens(tokens, 4)


def test_mirror_equals_a_patch_local_teacher_on_the_flipped_image():
    """For features that see one patch each and ignore left-right inside it (channel means
    per patch), mirroring the grid is exactly the flipped image's tokens."""
    patch, grid = 4, 5
    images = torch.rand(3, 3, patch * grid, patch * grid)

    def teacher(x: torch.Tensor) -> torch.Tensor:
        means = torch.nn.functional.avg_pool2d(x, patch).flatten(2).transpose(1, 2)
        return torch.cat([x.mean((2, 3))[:, None], means], dim=1)  # [B, 1 + g*g, 3]

    torch.testing.assert_close(mirror_tokens(teacher(images), grid), teacher(images.flip(-1)))


def _latents(shard_dir, samples, shard_size, pixels=None):
    """Latent shards, sample j: mean j; with ``pixels`` (j -> image or None) also img.bin."""
    def encode(idx):
        out = [latent_fields(np.full((1, 2, 2), j), np.zeros((1, 2, 2)), 0) for j in idx]
        if pixels:
            for f, j in zip(out, idx):
                f.update(image_fields(pixels(j)))
        return out

    shards = write_shards(shard_dir, samples, shard_size, encode, "x")
    write_manifest(shard_dir, {"samples": samples, "shards": shards, "num_classes": 1,
                               "latent_shape": [1, 2, 2], "scale_factor": 1.0,
                               "pixels": [3, 4, 4] if pixels else None})


def _tokens(teacher_dir, samples, shard_size, encoding, mirror, grid=2, dim=3):
    """Token shards: sample j's tokens are j + position; with ``mirror`` odd ones empty."""
    base = torch.arange(1 + grid * grid, dtype=torch.float32)[:, None].expand(-1, dim)
    shards = write_shards(teacher_dir, samples, shard_size, lambda idx: [
        token_fields(None if mirror and j % 2 else base + j, encoding) for j in idx], "x")
    write_manifest(teacher_dir, {"samples": samples, "shards": shards, "mode": "cached",
                                 "encoding": encoding, "mirror": mirror,
                                 "token_shape": [1 + grid * grid, dim], "grid": grid})
    return base


@pytest.mark.parametrize("encoding", ["int8", "fp8"])
def test_loader_decodes_and_mirrors_odd_samples(tmp_path, encoding):
    _latents(tmp_path / "lat", 24, 8)
    base = _tokens(tmp_path / "tok", 24, 8, encoding, mirror=True)
    batches = list(make_train_loader(tmp_path / "lat", 5, num_workers=0, epochs=1,
                                     teacher_dir=tmp_path / "tok", with_keys=True,
                                     teacher_format=(encoding, True)))
    seen = 0
    for batch in batches:
        for key, tokens in zip(batch["keys"], batch["teacher"]):
            j = int(key)
            stored = base + (j - j % 2)  # the pair's unflipped tokens, as decoded ...
            want = decode_tokens(encode_tokens(stored, encoding), 1, stored.shape, encoding)
            if j % 2:
                want = mirror_tokens(want, 2)  # ... with the grid mirrored
            assert torch.equal(tokens, want[0])
            assert rel_l2(tokens, mirror_tokens(stored[None], 2)[0] if j % 2 else stored
                          ) < TOLERANCE[encoding]
            seen += 1
    assert seen == 24


def test_loader_flips_online_pixels_of_odd_samples(tmp_path):
    images = {j: np.random.default_rng(j).integers(0, 256, (3, 4, 4), dtype=np.uint8)
              for j in range(0, 16, 2)}
    _latents(tmp_path / "lat", 16, 8, pixels=lambda j: images.get(j))
    batch = next(iter(make_train_loader(tmp_path / "lat", 16, num_workers=0, epochs=1,
                                        with_keys=True, images=True)))
    assert batch["images"].dtype == torch.uint8 and batch["teacher"] is None
    for key, image in zip(batch["keys"], batch["images"]):
        j = int(key)
        want = torch.from_numpy(images[j - j % 2])
        assert torch.equal(image, want.flip(-1) if j % 2 else want)


def test_loader_refuses_tokens_stored_otherwise(tmp_path):
    _latents(tmp_path / "lat", 8, 8)
    _tokens(tmp_path / "tok", 8, 8, "int8", mirror=False)
    with pytest.raises(ShardError, match=r"int8.*teacher\.encoding fp16.*dvc repro teacher"):
        make_train_loader(tmp_path / "lat", 4, num_workers=0, teacher_dir=tmp_path / "tok",
                          teacher_format=("fp16", False))
    with pytest.raises(ShardError, match=r"teacher\.mirror True.*dvc repro teacher"):
        make_train_loader(tmp_path / "lat", 4, num_workers=0, teacher_dir=tmp_path / "tok",
                          teacher_format=("int8", True))


def test_online_loader_refuses_shards_without_pixels(tmp_path):
    _latents(tmp_path / "lat", 8, 8)
    with pytest.raises(ShardError, match=r"no image pixels.*dvc repro encode"):
        make_train_loader(tmp_path / "lat", 4, num_workers=0, images=True)


def test_cached_mode_refuses_an_online_manifest_and_vice_versa(tmp_path):
    online = {"samples": 8, "shards": [], "mode": "online", "token_shape": [5, 3]}
    with pytest.raises(ShardError, match=r"teacher\.mode online.*dvc repro teacher"):
        check_teacher_data(online, tmp_path, "cached")
    cached = {**online, "mode": "cached", "shards": [{"name": "shard-000000.tar"}]}
    with pytest.raises(ShardError, match=r"teacher\.mode cached.*is online.*dvc repro teacher"):
        check_teacher_data(cached, tmp_path, "online")
    check_teacher_data(cached, tmp_path, "cached")  # old manifests: cached fp16, no mirror
