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


def test_shards_of_balanced_batches_together_are_the_one_process_set(parts):
    """Each of 3 workers draws its share; side by side they are the set one process draws
    (labels exactly, latents up to float rounding of other batch sizes)."""
    from gat.io import load_generator
    from gat.sample import balanced_batches, shard

    gen, _ = load_generator(parts["generator"])
    whole = list(balanced_batches(gen, 23, batch=5, seed=3))
    shares = [list(balanced_batches(gen, 23, batch=5, seed=3, rank=r, world=3)) for r in range(3)]
    assert [len(shard(23, r, 3)) for r in range(3)] == [7, 8, 8]
    assert list(shard(23, 0, 3)) + list(shard(23, 1, 3)) + list(shard(23, 2, 3)) == list(range(23))
    cat = [torch.cat([b[i] for share in shares for b in share]) for i in (0, 1)]
    assert torch.equal(cat[1], torch.cat([b[1] for b in whole]))
    torch.testing.assert_close(cat[0], torch.cat([b[0] for b in whole]), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shares[0][0][0][:2], shares[1][0][0][:2])  # distinct samples
    with pytest.raises(ValueError, match="rank 3 of 3"):
        shard(10, 3, 3)
