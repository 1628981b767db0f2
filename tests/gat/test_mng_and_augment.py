"""MNG noise hierarchy (release and paper schedules) and the release's DiffAugment."""

from __future__ import annotations

import pytest
import torch

from gat.augment import apply_augment, cached_target_mask, sample_augment
from gat.mng import MNG_VARIANTS, mng_alphas, mng_levels, nested_noise, perturb_levels


def test_alphas_exact():
    assert mng_alphas("exp") == [0.125, 0.25, 0.5, 1.0]
    assert mng_alphas("lin") == [0.25, 0.5, 0.75, 1.0]
    assert mng_alphas("none") == [1.0] * 4
    with pytest.raises(ValueError, match="allowed: none, lin, exp, msg"):
        mng_alphas("cosine")


def test_release_schedule_is_the_releases_t():
    signal, sigma = mng_levels("exp", "release")
    assert sigma == pytest.approx([0.885, 0.76, 0.51, 0.01])
    assert signal == pytest.approx([0.115, 0.24, 0.49, 0.99])
    signal, sigma = mng_levels("exp", "paper")
    assert signal == [0.125, 0.25, 0.5, 1.0] and sigma[-1] == 0.0
    assert sigma[0] == pytest.approx((1 - 0.125**2) ** 0.5)
    with pytest.raises(ValueError, match="allowed: release, paper"):
        mng_levels("exp", "cosine")


def test_paper_noise_nested_with_schedule_correlation():
    signal, sigma = mng_levels("exp", "paper")
    g = torch.Generator().manual_seed(0)
    noise = nested_noise((400_000,), "exp", "paper", g)
    for n, s in zip(noise[:3], sigma[:3]):
        assert n.std().item() == pytest.approx(s, abs=0.01)
    # unit noises: corr(e_j, e_k) = a_j / a_k for j < k (paper A.1)
    for j in range(3):
        for k in range(j + 1, 3):
            corr = torch.corrcoef(torch.stack([noise[j], noise[k]]))[0, 1].item()
            assert corr == pytest.approx(signal[j] / signal[k], abs=0.01)


def test_release_noise_lies_on_one_forward_trajectory():
    """Level k-1 = (s_{k-1}/s_k) * level k + independent noise: a noisier level is the
    cleaner one scaled down and noised further, so its residual is uncorrelated with it."""
    signal, sigma = mng_levels("exp", "release")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400_000, generator=g)
    levels = perturb_levels([x.view(1, 1, -1, 1)] * 4, "exp", generator=g).flatten(1)
    levels = levels.view(4, -1)
    for k, s in enumerate(sigma):
        assert (levels[k] - signal[k] * x).std().item() == pytest.approx(s, rel=0.01)
    for k in range(3, 0, -1):
        residual = levels[k - 1] - signal[k - 1] / signal[k] * levels[k]
        corr = torch.corrcoef(torch.stack([residual, levels[k]]))[0, 1].item()
        assert abs(corr) < 0.01


def test_paper_noised_levels_keep_unit_variance_and_last_is_clean():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 16, 16)
    out = perturb_levels([x] * 4, "exp", schedule="paper").chunk(4, dim=1)
    for level in out:
        assert level.var().item() == pytest.approx(1.0, abs=0.03)
    torch.testing.assert_close(out[-1], x)  # alpha_K = 1: no noise at all
    for a, level in zip(mng_alphas("exp"), out):
        corr = torch.corrcoef(torch.stack([level.flatten(), x.flatten()]))[0, 1].item()
        assert corr == pytest.approx(a, abs=0.02)


def test_release_last_level_carries_a_little_noise():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 16, 16)
    last = perturb_levels([x] * 4, "exp").chunk(4, dim=1)[-1]
    assert (last - 0.99 * x).std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("variant", MNG_VARIANTS)
def test_variants_shapes(variant):
    levels = [torch.randn(2, 4, 16, 16) for _ in range(4)]
    out = perturb_levels(levels, variant)
    assert out.shape == (2, 16, 16, 16)
    if variant in ("none", "msg"):
        torch.testing.assert_close(out[:, -4:], levels[-1])  # no noise at all


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
    aug = sample_augment(8, 16)
    out = apply_augment(torch.cat([x] * 4, 1), aug, levels=4).chunk(4, 1)
    for level in out[1:]:
        torch.testing.assert_close(level, out[0])


def test_augment_probabilities_and_ranges_are_the_releases():
    g = torch.Generator().manual_seed(0)
    aug = sample_augment(20_000, 32, generator=g)
    coloured = (aug.brightness != 0) | (aug.saturation != 1) | (aug.contrast != 1)
    assert coloured.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert aug.flip.float().mean().item() == pytest.approx(0.4, abs=0.02)
    # translation: any latent pixel up to int(32/8 + 0.5) = 4, not multiples of a patch
    assert set(aug.shift.unique().tolist()) == set(range(-4, 5))
    assert aug.cutout_size == 16


def test_translation_in_pixels_and_cutout_square():
    x = torch.ones(1, 1, 16, 16)
    aug = sample_augment(1, 16)
    aug.brightness.zero_(), aug.saturation.fill_(1), aug.contrast.fill_(1)
    aug.flip.zero_()
    aug.shift[:] = torch.tensor([[1, -3]])
    aug.cutout.fill_(-100)  # cutout off: translation only
    out = apply_augment(x, aug)[0, 0]
    assert out[0].sum() == 0 and out[1:, :13].eq(1).all() and out[:, 13:].sum() == 0
    aug.shift.zero_()
    aug.cutout[:] = torch.tensor([[-4, 10]])  # clipped at the top edge: 4 rows x 6 columns
    out = apply_augment(x, aug)[0, 0]
    assert (out == 0).sum().item() == 4 * 6 and out[:4, 10:].sum() == 0


def test_cached_targets_of_flipped_samples_keep_only_cls():
    flip = torch.tensor([True, False])
    mask = cached_target_mask(flip, 1 + 4)
    assert mask.tolist() == [[True, False, False, False, False], [True] * 5]
