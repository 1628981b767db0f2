"""Sampling latents: balanced labels, one z per seed whatever the batch, argument parsing."""

from __future__ import annotations

import pytest
import torch

from gat.sample import balanced_labels, parse_classes, parse_seeds, sample_latents


def test_balanced_labels_and_seeded_latents(parts):
    from gat.io import load_generator

    counts = torch.bincount(balanced_labels(10, 4), minlength=4)
    assert counts.tolist() == [3, 3, 2, 2]
    gen, _ = load_generator(parts["generator"])
    a, pairs = sample_latents(gen, [0, 3], [5, 6])
    b, _ = sample_latents(gen, [3], [6], psi=1.0)
    assert pairs == [(0, 5), (0, 6), (3, 5), (3, 6)] and a.shape == (4, 4, 16, 16)
    torch.testing.assert_close(a[3:], b)  # a seed's sample does not depend on the batch
    assert parse_seeds("0-2,7") == [0, 1, 2, 7] and parse_classes("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        parse_classes("0,9", 4)
    with pytest.raises(ValueError, match="backwards"):
        parse_seeds("5-1")


def test_unconditional_classes_and_bad_settings_are_refused():
    from gat.sample import check_settings

    assert parse_classes("all", 0) == [0]  # its one internal id
    with pytest.raises(ValueError, match="unconditional"):
        parse_classes("0", 0)
    with pytest.raises(ValueError, match="psi -1: truncation must be >= 0"):
        check_settings(4, -1.0, 1.0)
    with pytest.raises(ValueError, match="guidance 2: the generator is unconditional"):
        check_settings(0, 1.0, 2.0)
    check_settings(0, 0.5, 1.0)
    check_settings(4, 0.0, 2.0)
