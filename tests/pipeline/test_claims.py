"""The claims' variants and the verdict logic, on constructed numbers."""

from __future__ import annotations

import dataclasses
import math

import pytest

from gat.train import model_lr
from pipeline import claims as cl
from pipeline.config import load_params, with_overrides
from tests.helpers import REPO


def _fds(mean: float, spread: float = 1.0) -> list[float]:
    return [mean - spread, mean, mean + spread]


@pytest.mark.parametrize("better, worse, expected", [
    (_fds(10), _fds(20), cl.HOLDS),
    (_fds(20), _fds(10), cl.REVERSED),
    (_fds(10, 3), _fds(12, 3), cl.OVERLAP),  # means in the paper's order, intervals overlap
    ([10.0], [20.0], cl.ONE_SEED),
    (_fds(10), [math.inf] * 3, cl.HOLDS),  # a diverged variant is the worst
    ([math.inf] * 3, _fds(10), cl.REVERSED),
    ([math.inf] * 3, [math.inf] * 3, cl.OVERLAP),
    (_fds(10), [15.0, 16.0, math.inf], cl.HOLDS),  # partly diverged: above its finite seeds
    ([12.0, 9.0, 30.0], [15.0, 16.0, math.inf], cl.OVERLAP),
])
def test_compare(better, worse, expected):
    assert cl.compare(cl.Summary.of(better), cl.Summary.of(worse)) == expected


def test_summary_interval_is_student_t():
    s = cl.Summary.of([9.0, 10.0, 11.0])
    assert s.mean == 10.0 and s.high - s.mean == pytest.approx(4.303 / math.sqrt(3))
    assert cl.Summary.of([10.0]).low == cl.Summary.of([10.0]).high == 10.0


@pytest.mark.parametrize("results, expected", [
    ([cl.HOLDS, cl.HOLDS], cl.HOLDS),
    ([cl.REVERSED], cl.REVERSED),
    ([cl.OVERLAP, cl.OVERLAP], cl.OVERLAP),
    ([cl.ONE_SEED, cl.ONE_SEED], cl.ONE_SEED),
    ([cl.HOLDS, cl.OVERLAP, cl.REVERSED], "mixed (1 holds, 1 reversed, 1 inconclusive of 3)"),
])
def test_claim_verdict(results, expected):
    assert cl.verdict(results) == expected


def test_lr_transfer_trains_each_size_at_the_others_lr():
    params = load_params(REPO / "profiles" / "tiny.yaml", check_paths=False)
    claim = cl.claims(params)["lr_transfer"]
    small, large = params.claims.small, params.claims.large
    for variant, size, like in (("small_own", small, small), ("small_at_large", small, large),
                                ("large_own", large, large), ("large_at_small", large, small)):
        v = next(v for v in claim.variants if v.name == variant)
        assert v.size == size
        p = with_overrides(params, v.overrides, check_paths=False)
        assert model_lr(p.train, size) == pytest.approx(model_lr(params.train, like))


def test_every_claim_names_variants_it_compares():
    params = load_params(REPO / "profiles" / "tiny.yaml", check_paths=False)
    found = cl.claims(params)
    assert set(found) == set(cl.CLAIMS)
    for claim in found.values():
        names = {v.name for v in claim.variants}
        assert len(names) == len(claim.variants)
        assert {n for pair in claim.comparisons for n in pair} <= names
        assert set(claim.paper) <= names
    patch = found["patch"]
    assert patch.comparisons == [("patch2", "patch4")]  # the smaller patch is expected better
    assert dataclasses.asdict(patch.variants[0])["size"].endswith("/2")
