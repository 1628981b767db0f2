"""The compute-FD power law and the scaling stage (its refusals and its outputs)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.scaling import fit_power_law

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


