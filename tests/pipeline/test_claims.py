"""The claims' variants and the verdict logic, on constructed numbers."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pandas as pd
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


def _seeds(*fds: float) -> dict[int, float]:
    return dict(enumerate(fds))


def test_paired_verdict_sees_a_gap_the_variants_own_intervals_hide():
    """The seed moves both variants alike (common random numbers): FDs 10/20/30 against
    12/22/32 overlap as intervals, but the paired difference is 2 under every seed."""
    better, worse = _seeds(10.0, 20.0, 30.0), _seeds(12.0, 22.5, 31.5)
    assert cl.compare(cl.Summary.of(list(better.values())),
                      cl.Summary.of(list(worse.values()))) == cl.OVERLAP
    paired = cl.compare_paired(better, worse)
    assert paired["verdict"] == cl.HOLDS and paired["seeds"] == 3
    assert paired["difference"] == pytest.approx(2.0)
    half = 4.303 * 0.5 / math.sqrt(3)  # t(2) x sd of (2, 2.5, 1.5) / sqrt(3)
    assert (paired["low"], paired["high"]) == pytest.approx((2.0 - half, 2.0 + half))
    assert paired["detectable"] == pytest.approx(half)
    assert cl.compare_paired(worse, better)["verdict"] == cl.REVERSED
    assert paired["seeds_needed"] == 3  # n=2: 12.706 x 0.5 / 1.414 = 4.49 > 2; n=3: 1.24


@pytest.mark.parametrize("mean, sd, expected", [
    (10.0, 5.0, 4),   # n=3: 4.303 x 5 / 1.732 = 12.4 > 10; n=4: 3.182 x 5 / 2 = 7.96
    (-10.0, 5.0, 4),  # a reversal is called as soon
    (5.0, 5.0, 7),    # n=6: 2.571 x 5 / 2.449 = 5.25 > 5; n=7: 2.447 x 5 / 2.646 = 4.62
    (0.2, 6.2, None),  # MNG's exp < lin in the paired suite: beyond 100 seeds
    (1.0, 0.0, 2),
    (0.0, 0.0, None),
])
def test_seeds_needed_is_the_first_n_whose_interval_excludes_zero(mean, sd, expected):
    assert cl.seeds_needed(mean, sd) == expected


@pytest.mark.parametrize("better, worse, expected", [
    (_seeds(10.0, 20.0, 30.0), _seeds(13.0, 19.0, 31.0), cl.HOLDS_ZERO),  # 3, -1, 1
    (_seeds(10.0), _seeds(20.0), cl.ONE_SEED),
    (_seeds(10.0, 11.0, 12.0), _seeds(15.0, 16.0, math.inf), cl.HOLDS),  # own intervals
    ({0: 10.0, 1: 11.0, 5: 99.0}, {0: 12.0, 1: 13.5, 2: 1.0}, cl.HOLDS_ZERO),  # seeds 0, 1
])
def test_paired_verdict_cases(better, worse, expected):
    assert cl.compare_paired(better, worse)["verdict"] == expected


def test_summary_interval_is_student_t():
    s = cl.Summary.of([9.0, 10.0, 11.0])
    assert s.mean == 10.0 and s.high - s.mean == pytest.approx(4.303 / math.sqrt(3))
    assert cl.Summary.of([10.0]).low == cl.Summary.of([10.0]).high == 10.0


@pytest.mark.parametrize("results, expected", [
    ([cl.HOLDS, cl.HOLDS], cl.HOLDS),
    ([cl.REVERSED], cl.CONTRADICTED),
    ([cl.OVERLAP, cl.OVERLAP], cl.OVERLAP),
    ([cl.ONE_SEED, cl.ONE_SEED], cl.ONE_SEED),
    ([cl.HOLDS, cl.HOLDS_ZERO, cl.REVERSED],
     "contradicted (1 reversed, 1 holds, 1 inconclusive of 3)"),
    ([cl.HOLDS, cl.HOLDS_ZERO], "inconclusive (1 holds, 1 inconclusive of 2)"),
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


def test_claims_power_projects_each_claims_seeds_from_its_runs(tmp_path):
    """benchmarks/claims_power.py on a runs.csv as the claim stage writes it: REPA off
    worse by 10, 5, 15 under seeds 0-2 (mean 10, sd 5): it holds at 4 seeds."""
    (tmp_path / "repa").mkdir()
    pd.DataFrame({"variant": ["on"] * 3 + ["off"] * 3, "seed": [0, 1, 2] * 2,
                  "fd": [50.0, 40.0, 60.0, 60.0, 45.0, 75.0]}).to_csv(
        tmp_path / "repa" / "runs.csv", index=False)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "claims_power.py"),
                           str(tmp_path), "--params", str(REPO / "params.yaml"),
                           "--minutes-per-seed", "10"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    row = next(line.split() for line in lines if line.startswith("repa") and "<" in line)
    assert row[1:4] == ["on", "<", "off"] and row[-4:] == ["10.0", "5.0", "12.4", "4"]
    assert "repa         holds at 4 seeds: a suite of 4 seeds takes 40 min" in lines
    assert any(line.startswith("mng") and "no runs" in line for line in lines)
