"""MNG noise hierarchy and DiffAugment with teacher-token alignment."""

from __future__ import annotations

import pytest
import torch

from gat.augment import align_tokens, apply_augment, sample_augment
from gat.mng import MNG_VARIANTS, mng_alphas, nested_noise, perturb_levels


def test_alphas_exact():
    assert mng_alphas("exp") == [0.125, 0.25, 0.5, 1.0]
    assert mng_alphas("lin") == [0.25, 0.5, 0.75, 1.0]
    assert mng_alphas("none") == [1.0] * 4
    with pytest.raises(ValueError, match="allowed: none, lin, exp, msg"):
        mng_alphas("cosine")


def test_nested_noise_unit_variance_and_schedule_correlation():
    alphas = mng_alphas("exp")
    g = torch.Generator().manual_seed(0)
    eps = nested_noise((400_000,), alphas, g)
    for e in eps:
        assert e.var().item() == pytest.approx(1.0, abs=0.01)
    # corr(e_j, e_k) = a_j / a_k for j < k: the levels lie on one trajectory.
    for j in range(4):
        for k in range(j + 1, 4):
            corr = torch.corrcoef(torch.stack([eps[j], eps[k]]))[0, 1].item()
            assert corr == pytest.approx(alphas[j] / alphas[k], abs=0.01)


def test_noised_levels_keep_unit_variance_and_last_is_clean():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 16, 16)
    out = perturb_levels([x] * 4, "exp").chunk(4, dim=1)
    for level in out:
        assert level.var().item() == pytest.approx(1.0, abs=0.03)
    torch.testing.assert_close(out[-1], x)  # alpha_K = 1: no noise at all
    # signal share per level = alpha_k: correlation with the clean image
    for a, level in zip(mng_alphas("exp"), out):
        corr = torch.corrcoef(torch.stack([level.flatten(), x.flatten()]))[0, 1].item()
        assert corr == pytest.approx(a, abs=0.02)


@pytest.mark.parametrize("variant", MNG_VARIANTS)
def test_variants_shapes(variant):
    levels = [torch.randn(2, 4, 16, 16) for _ in range(4)]
    out = perturb_levels(levels, variant)
    assert out.shape == (2, 16, 16, 16)
    torch.testing.assert_close(out[:, -4:], levels[-1])  # the last level is always clean


def test_none_uses_only_last_output_and_msg_degrades_resolution():
    levels = [torch.randn(2, 4, 16, 16) for _ in range(4)]
    none = perturb_levels(levels, "none").chunk(4, dim=1)
    assert all(torch.equal(level, levels[-1]) for level in none)
    msg = perturb_levels(levels, "msg").chunk(4, dim=1)
    # level 1 holds 16/8 = 2x2 distinct values per channel
    assert msg[0][0, 0].unique().numel() <= 4


def test_augment_shared_across_levels():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 16, 16)
    aug = sample_augment(8, 16, step=2)
    out = apply_augment(torch.cat([x] * 4, 1), aug, levels=4).chunk(4, 1)
    for level in out[1:]:
        torch.testing.assert_close(level, out[0])
    assert (aug.shift % 2 == 0).all() and aug.shift.abs().max() <= 2


def test_teacher_tokens_follow_flip_and_translation():
    """Augment an image whose pixels equal their token's id; tokens must match it."""
    patch, grid = 2, 8
    size = patch * grid
    ids = torch.arange(grid * grid, dtype=torch.float32).view(1, 1, grid, grid)
    image = ids.repeat_interleave(patch, 2).repeat_interleave(patch, 3) + 1.0
    tokens = torch.cat([torch.zeros(1, 1, 1), ids.flatten(2).transpose(1, 2) + 1.0], 1)
    for seed in range(20):
        aug = sample_augment(1, size, step=patch, generator=torch.Generator().manual_seed(seed))
        aug.brightness.zero_(), aug.saturation.fill_(1), aug.contrast.fill_(1)
        aug.cutout.fill_(-100)  # cutout off: we check geometry only
        moved = apply_augment(image, aug)
        per_token = moved[0, 0, ::patch, ::patch].flatten()  # one pixel per token
        aligned, mask = align_tokens(tokens, aug, patch)
        torch.testing.assert_close(aligned[0, 1:, 0][mask[0, 1:]], per_token[mask[0, 1:]])
        assert (per_token[~mask[0, 1:]] == 0).all()  # masked tokens saw padding only
