"""The compute-FID power law: FD = a * GFLOPs^b, fitted by least squares in log-log."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PowerLaw:
    a: float
    b: float
    a_ci: tuple[float, float]  # 95% bootstrap interval
    b_ci: tuple[float, float]
    pearson_r: float  # correlation of FD with GFLOPs (the paper: -0.95)
    n: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.a * np.power(x, self.b)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(log_a)), float(b)


def fit_power_law(gflops, fd, bootstrap: int = 1000, seed: int = 0) -> PowerLaw:
    """Fit FD = a * GFLOPs^b; bootstrap over points (resampling with replacement)."""
    x, y = np.asarray(gflops, float), np.asarray(fd, float)
    if len(x) < 3:
        raise ValueError(f"a power law needs at least 3 sizes with results; got {len(x)}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("GFLOPs and FD must be positive for a log-log fit")
    a, b = _fit(x, y)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) >= 2:  # a line needs two distinct points
            samples.append(_fit(x[idx], y[idx]))
    boot = np.array(samples) if samples else np.array([[a, b]])
    a_ci = tuple(float(v) for v in np.percentile(boot[:, 0], [2.5, 97.5]))
    b_ci = tuple(float(v) for v in np.percentile(boot[:, 1], [2.5, 97.5]))
    r = float(np.corrcoef(x, y)[0, 1])
    return PowerLaw(a, b, a_ci, b_ci, r, len(x))


def band(law: PowerLaw, gflops, fd, xs: np.ndarray, bootstrap: int = 500, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray]:
    """95% bootstrap band of the fitted curve at ``xs``."""
    x, y = np.asarray(gflops, float), np.asarray(fd, float)
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) >= 2:
            a, b = _fit(x[idx], y[idx])
            curves.append(a * np.power(xs, b))
    if not curves:
        return law(xs), law(xs)
    curves = np.array(curves)
    return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)
