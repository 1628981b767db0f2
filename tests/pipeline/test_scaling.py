"""The compute-FD power law and the scaling stage (its refusals and its outputs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.scaling import fit_power_law, per_size

# The paper's G GFLOPs (SPEC section 6): the x values a real study would have.
PAPER_GFLOPS = np.array([1.41, 5.56, 6.06, 23.0, 80.7, 118.6])


def test_fit_recovers_a_and_b_and_correlation():
    rng = np.random.default_rng(0)
    exact = 30.0 * PAPER_GFLOPS**-0.35
    fd = exact * np.exp(rng.normal(0, 0.003, len(PAPER_GFLOPS)))  # 0.3% noise
    law = fit_power_law(PAPER_GFLOPS, fd, draws=300)
    assert law.a == pytest.approx(30.0, rel=0.02)
    assert law.b == pytest.approx(-0.35, rel=0.02)
    assert law.b_ci[0] <= law.b <= law.b_ci[1] and law.b_ci[1] - law.b_ci[0] < 0.02
    # FD falls with compute: r is Pearson's on raw values (as the paper's -0.95), and the
    # log-log line is straight
    assert law.pearson_r < 0
    assert law.pearson_r == pytest.approx(np.corrcoef(PAPER_GFLOPS, exact)[0, 1], abs=0.01)
    assert law.pearson_r_log == pytest.approx(-1.0, abs=1e-3)
    lo, hi = law.band(PAPER_GFLOPS)
    assert (lo <= law(PAPER_GFLOPS) + 1e-9).all() and (law(PAPER_GFLOPS) <= hi + 1e-9).all()


def test_fit_of_an_increasing_law_has_positive_correlation():
    law = fit_power_law([1.0, 2.0, 4.0, 8.0], [2.0, 2.0 * 2**0.5, 4.0, 2.0 * 8**0.5], draws=50)
    assert law.b == pytest.approx(0.5) and law.a == pytest.approx(2.0)
    assert law.pearson_r > 0.95


@pytest.mark.parametrize(("gflops", "fd", "message"), [
    ([1.0, 2.0], [3.0, 2.0], "at least 3 sizes"),
    ([1.0, 2.0, 0.0], [3.0, 2.0, 1.0], "must be positive"),
    ([1.0, 2.0, 3.0], [3.0, np.nan, 1.0], "finite"),
    ([2.0, 2.0, 2.0], [3.0, 2.0, 1.0], "same GFLOPs"),
])
def test_fit_refuses_unusable_points(gflops, fd, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(gflops, fd)


# ----------------------------------------------------------------------------- the stage




def test_per_size_means_and_spread_over_seeds():
    runs = pd.DataFrame({"size": ["A", "A", "B", "B", "B"], "seed": [0, 1, 0, 1, 2],
                         "g_gflops": [1.0, 1.0, 2.0, 2.0, 2.0], "g_params": 1, "d_params": 2,
                         "metric": "FD-classifier", "study_key": "s",
                         "fd": [10.0, 12.0, 5.0, 6.0, 7.0], "precision": 0.5, "recall": 0.1,
                         "class_accuracy": 0.7, "train_images_per_s": 100.0})
    table = per_size(runs)
    assert table["size"].tolist() == ["A", "B"] and table["seeds"].tolist() == [2, 3]
    assert table["fd"].tolist() == [11.0, 6.0] and table["fd_std"].tolist() == [2**0.5, 1.0]
    assert table["fd_min"].tolist() == [10.0, 5.0] and table["fd_max"].tolist() == [12.0, 7.0]


def test_seed_replicas_without_spread_give_the_plain_interval():
    gflops = PAPER_GFLOPS
    fd = 30.0 * gflops**-0.35 * np.exp(np.random.default_rng(0).normal(0, 0.05, len(gflops)))
    plain = fit_power_law(gflops, fd, draws=200, seed=1)
    same = fit_power_law(gflops, fd, draws=200, seed=1, replicas=[[v, v] for v in fd])
    assert same.b_ci == pytest.approx(plain.b_ci)
    spread = fit_power_law(gflops, fd, draws=200, seed=1,
                           replicas=[[0.7 * v, 1.3 * v] for v in fd])
    assert spread.b_ci[1] - spread.b_ci[0] > plain.b_ci[1] - plain.b_ci[0]
