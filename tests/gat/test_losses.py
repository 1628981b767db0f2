"""Objective: relativistic pairing, approximated R1 vs the true penalty, REPA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gat.losses import (
    approx_gradient_penalty,
    d_relativistic,
    g_relativistic,
    repa_loss,
    resize_token_grid,
)


def test_relativistic_pairing():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = torch.nn.functional.softplus(torch.tensor([-2.0, 1.0])).mean()
    torch.testing.assert_close(d_relativistic(real, fake), expected)
    torch.testing.assert_close(g_relativistic(real, fake),
                               torch.nn.functional.softplus(torch.tensor([2.0, -1.0])).mean())


def test_approximated_r1_matches_true_gradient_penalty():
    torch.manual_seed(0)
    disc = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    x = torch.randn(256, 16, requires_grad=True)
    logits = disc(x).squeeze(1)
    (grad,) = torch.autograd.grad(logits.sum(), x)
    true_r1 = grad.square().sum(1).mean()
    sigma, draws = 0.01, 200
    with torch.no_grad():
        approx = torch.stack([
            approx_gradient_penalty(disc(x).squeeze(1),
                                    disc(x + sigma * torch.randn_like(x)).squeeze(1), sigma)
            for _ in range(draws)
        ]).mean()
    # (1/sigma^2) E[(D(x) - D(x+eps))^2] = ||grad D||^2 to first order (factor 1).
    assert approx.item() == pytest.approx(true_r1.item(), rel=0.03)


def test_repa_loss_and_mask():
    t = torch.randn(2, 5, 8)
    for weighting, opposite in (("release", 4.0), ("paper", 2.0)):
        assert repa_loss(t, t, weighting=weighting).item() == pytest.approx(0.0, abs=1e-6)
        assert repa_loss(-t, t, weighting=weighting).item() == pytest.approx(opposite, abs=1e-6)
        mask = torch.zeros(2, 5, dtype=torch.bool)
        mask[:, 0] = True
        mixed = torch.cat([t[:, :1], -t[:, 1:]], 1)
        assert repa_loss(mixed, t, mask, weighting).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="release or paper"):
        repa_loss(t, t, weighting="mean")


def test_repa_release_weighs_cls_as_much_as_all_patches():
    """Only [cls] misaligned: the release counts it fully, Eq. 9's mean 1/(1+N) of it."""
    t = torch.randn(3, 1 + 64, 8)
    wrong_cls = torch.cat([-t[:, :1], t[:, 1:]], 1)
    assert repa_loss(wrong_cls, t, weighting="release").item() == pytest.approx(2.0, abs=1e-5)
    assert repa_loss(wrong_cls, t, weighting="paper").item() == pytest.approx(2 / 65, abs=1e-5)


def test_resize_token_grid():
    tokens = torch.randn(2, 1 + 16 * 16, 4)
    out = resize_token_grid(tokens, 8)
    assert out.shape == (2, 65, 4)
    torch.testing.assert_close(out[:, 0], tokens[:, 0])
    same = torch.ones(1, 1 + 16, 3)
    torch.testing.assert_close(resize_token_grid(same, 2), torch.ones(1, 5, 3))
