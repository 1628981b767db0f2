"""The compute-FID power law: FD = a * GFLOPs^b, least squares in log-log (plain numpy).

log FD = log a + b log GFLOPs is a straight line, so the fit is ordinary least squares on
the logs; its uncertainty comes from a bootstrap over sizes (resampled with replacement),
which makes no assumption about the noise of each point.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.layout import LAYOUT, Layout

COLUMNS = ["size", "seed", "g_params", "d_params", "g_gflops", "fd", "metric", "precision",
           "recall", "class_accuracy", "train_images_per_s", "study_key"]
MIN_POINTS = 3  # two points always fit a line exactly: no evidence of a law


@dataclass(frozen=True)
class PowerLaw:
    """FD = a * GFLOPs^b with 95% bootstrap intervals and the correlations."""

    a: float
    b: float
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    pearson_r: float  # of FD with GFLOPs, raw values (the paper reports -0.95)
    pearson_r_log: float  # of log FD with log GFLOPs: how straight the log-log line is
    n: int
    boot: np.ndarray = field(repr=False, compare=False)  # [M, 2] bootstrap (a, b)

    def __call__(self, gflops: np.ndarray) -> np.ndarray:
        return self.a * np.power(gflops, self.b)

    def band(self, gflops: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap band [len(gflops)] (low, high) of the fitted curve."""
        curves = self.boot[:, :1] * np.power(np.asarray(gflops)[None, :], self.boot[:, 1:])
        tail = 100 * (1 - level) / 2
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


def fit_log_log(gflops: np.ndarray, fd: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares line through (log gflops, log fd)."""
    b, log_a = np.polyfit(np.log(gflops), np.log(fd), 1)
    return float(np.exp(log_a)), float(b)


def bootstrap(gflops: np.ndarray, replicas: list[np.ndarray], draws: int, seed: int = 0
              ) -> np.ndarray:
    """[M, 2] (a, b) refitted on resampled data: sizes drawn with replacement, and for each
    drawn size its seeds' FDs (``replicas[i]``) drawn with replacement and averaged, so the
    interval holds both the spread over sizes and over seeds. Draws with < 2 distinct x are
    skipped (a line through one x is undefined), so M <= draws."""
    # Two streams: the draws of sizes do not depend on how many seeds each size has.
    size_rng, seed_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    fits = []
    for _ in range(draws):
        idx = size_rng.integers(0, len(gflops), len(gflops))
        if len(np.unique(gflops[idx])) < 2:
            continue
        fd = np.array([seed_rng.choice(replicas[i], len(replicas[i])).mean() for i in idx])
        fits.append(fit_log_log(gflops[idx], fd))
    return np.array(fits).reshape(-1, 2)


def _check(gflops: np.ndarray, fd: np.ndarray) -> None:
    if gflops.shape != fd.shape or gflops.ndim != 1:
        raise ValueError(f"gflops {gflops.shape} and fd {fd.shape} must be 1-D, same length")
    if len(gflops) < MIN_POINTS:
        raise ValueError(f"a power law needs at least {MIN_POINTS} sizes with results; "
                         f"got {len(gflops)}")
    if not (np.isfinite(gflops).all() and np.isfinite(fd).all()):
        raise ValueError("GFLOPs and FD must be finite")
    if (gflops <= 0).any() or (fd <= 0).any():
        raise ValueError(f"GFLOPs and FD must be positive for a log-log fit: gflops "
                         f"{gflops.tolist()}, fd {fd.tolist()}")
    if len(np.unique(gflops)) < 2:
        raise ValueError(f"all sizes have the same GFLOPs ({gflops[0]}): nothing to fit")


def fit_power_law(gflops, fd, draws: int = 1000, seed: int = 0, level: float = 0.95,
                  replicas: list | None = None) -> PowerLaw:
    """Fit FD = a * GFLOPs^b to points ([N] each, N >= 3) with a bootstrap interval.

    ``replicas``: for each point, the FDs of its seeds (``fd`` is then their mean); the
    bootstrap resamples them too. Default: one value per point.
    """
    x, y = np.asarray(gflops, float), np.asarray(fd, float)
    _check(x, y)
    reps = [np.asarray(r, float) for r in replicas] if replicas is not None else y[:, None]
    a, b = fit_log_log(x, y)
    boot = bootstrap(x, list(reps), draws, seed)
    if not len(boot):
        boot = np.array([[a, b]])
    tail = 100 * (1 - level) / 2

    def ci(col: int) -> tuple[float, float]:
        lo, hi = np.percentile(boot[:, col], [tail, 100 - tail])
        return float(lo), float(hi)

    return PowerLaw(a, b, ci(0), ci(1), float(np.corrcoef(x, y)[0, 1]),
                    float(np.corrcoef(np.log(x), np.log(y))[0, 1]), len(x), boot)


def read_json(path: Path) -> tuple[dict | None, str]:
    """(contents, "") or (None, why it cannot be used)."""
    if not path.exists():
        return None, f"no {path}"
    try:
        return json.loads(path.read_text()), ""
    except (OSError, json.JSONDecodeError) as err:
        return None, f"unreadable {path} ({err})"


def run_row(size: str, seed: int, layout: Layout = LAYOUT) -> tuple[dict | None, str]:
    """One (size, training seed)'s row, or (None, why it is left out)."""
    train, why_train = read_json(layout.train_results(size, seed) / "metrics.json")
    ev, why_eval = read_json(layout.eval_metrics(size, seed))
    if train is None or ev is None:
        return None, "; ".join(w for w in (why_train, why_eval) if w)
    fd, gflops = ev.get("fd"), ev.get("g_gflops")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (fd, gflops)):
        return None, f"{ev.get('metric', 'FD')} {fd}, GFLOPs {gflops}: not positive finite numbers"
    row = {k: ev.get(k) for k in COLUMNS}
    row.update(size=size, seed=seed, train_images_per_s=train.get("images_per_s"),
               study_key=train.get("study_key", ""))
    if ev.get("run_key") != train.get("run_key"):
        return None, (f"evaluated generator {ev.get('run_key')} is not the trained one "
                      f"{train.get('run_key')}: rerun its evaluate stage")
    return row, ""


def collect(sizes: list[str], seeds: list[int], layout: Layout = LAYOUT
            ) -> tuple[pd.DataFrame, list[str]]:
    """One row per (size, seed) with results, by GFLOPs; "SIZE seed N (why)" for the
    others."""
    rows, missing = [], []
    for size in sizes:
        for seed in seeds:
            row, why = run_row(size, seed, layout)
            if row is None:
                missing.append(f"{size} seed {seed} ({why})")
            else:
                rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["g_gflops", "seed"], ignore_index=True), missing


def per_size(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per size: the seeds' mean of each measurement, and the FD's spread
    (``fd_std``, ``fd_min``, ``fd_max``; ``seeds``: how many)."""
    mean = ["fd", "precision", "recall", "class_accuracy", "train_images_per_s"]
    fixed = ["g_params", "d_params", "g_gflops", "metric", "study_key"]
    grouped = runs.groupby("size", sort=False)
    table = grouped[fixed].first().join(grouped[mean].mean())
    table = table.join(grouped["fd"].agg(fd_std=lambda v: v.std(ddof=1) if len(v) > 1 else 0.0,
                                         fd_min="min", fd_max="max", seeds="count"))
    return table.reset_index().sort_values("g_gflops", ignore_index=True)

class ScalingError(ValueError):
    """The table cannot be fitted; the message says what is missing and what to run."""


def check_table(table: pd.DataFrame, missing: list[str]) -> tuple[str, str]:
    """(metric, study key) of a table that can be fitted, else :class:`ScalingError`."""
    sizes = list(dict.fromkeys(table["size"]))
    if len(sizes) < MIN_POINTS:
        have = ", ".join(sizes) or "none"
        raise ScalingError(
            f"the power-law fit needs results for at least {MIN_POINTS} sizes; have "
            f"{len(sizes)} ({have}). Missing: {'; '.join(missing) or 'none'}. Run their "
            "train and evaluate stages, or list more sizes in study.sizes.")
    labels = sorted(set(table["metric"]))
    if len(labels) > 1:  # FID and FD-classifier are different scales: never fit them together
        raise ScalingError(f"sizes were evaluated with different metrics {labels}; "
                           "re-evaluate them all with one evaluator.source (dvc repro)")
    studies = sorted(set(table["study_key"]))
    if len(studies) > 1:
        raise ScalingError(
            f"the sizes were trained under different configurations (study keys "
            f"{', '.join(studies)}), as a partial experiment leaves them; run `dvc repro` to "
            "bring every size to the current params")
    return labels[0], studies[0]


def fit_metrics(law: PowerLaw, label: str, missing: list[str], seeds: int = 1) -> dict:
    return {"metric": label, "a": law.a, "b": law.b, "a_ci_low": law.a_ci[0],
            "a_ci_high": law.a_ci[1], "b_ci_low": law.b_ci[0], "b_ci_high": law.b_ci[1],
            "pearson_r": law.pearson_r, "pearson_r_log": law.pearson_r_log, "sizes": law.n,
            "seeds": seeds, "bootstrap_fits": len(law.boot), "missing": missing}


def fit_sizes(runs: pd.DataFrame, draws: int, seed: int = 0) -> tuple[pd.DataFrame, PowerLaw]:
    """The per-size table (seeds' means and spread) and the law fitted on its means, the
    bootstrap resampling sizes and seeds; the table gains ``fd_fit``."""
    table = per_size(runs)
    replicas = [runs.loc[runs["size"] == size, "fd"].to_numpy() for size in table["size"]]
    law = fit_power_law(table["g_gflops"], table["fd"], draws, seed, replicas=replicas)
    return table.assign(fd_fit=law(table["g_gflops"].to_numpy())), law


# ----------------------------------------------------------------------------- compute law

PAPER_COMPUTE_LAW = (3.52e5, -0.456)  # Fig. 21: FID-50K = a * C^b, C in training GFLOPs


def trajectories(sizes: list[str], seeds: list[int], layout: Layout = LAYOUT) -> pd.DataFrame:
    """Every FD proxy the training logged (runtime.fd_every), against the training compute
    spent so far: one row per (size, seed, step) with ``compute_gflops`` = the counted
    GFLOPs of one iteration x the step. Runs without a counted step or proxy are left out."""
    rows = []
    for size in sizes:
        for seed in seeds:
            folder = layout.train_results(size, seed)
            metrics, _ = read_json(folder / "metrics.json")
            per_iter = (metrics or {}).get("train_gflops_per_iter")
            if not per_iter or not (folder / "log.csv").exists():
                continue
            log = pd.read_csv(folder / "log.csv")
            if "fd" not in log:
                continue
            log = log[log["fd"].notna()]
            rows += [{"size": size, "seed": seed, "step": int(step),
                      "compute_gflops": per_iter * step, "fd": float(fd)}
                     for step, fd in zip(log["step"], log["fd"])]
    return pd.DataFrame(rows, columns=["size", "seed", "step", "compute_gflops", "fd"])


def compute_law(traj: pd.DataFrame, draws: int, seed: int = 0
                ) -> tuple[pd.DataFrame, PowerLaw] | None:
    """FD = a * C^b fitted, as the paper's Eq. 21, on the final point of each size (the
    seeds' mean, their spread in the bootstrap); None with fewer than 3 sizes."""
    if traj.empty:
        return None
    last = traj.sort_values("step").groupby(["size", "seed"], sort=False).tail(1)
    final = (last.groupby("size", sort=False)
             .agg(compute_gflops=("compute_gflops", "mean"), fd=("fd", "mean"),
                  seeds=("fd", "count"))
             .reset_index().sort_values("compute_gflops", ignore_index=True))
    if len(final) < MIN_POINTS:
        return None
    replicas = [last.loc[last["size"] == size, "fd"].to_numpy() for size in final["size"]]
    law = fit_power_law(final["compute_gflops"], final["fd"], draws, seed, replicas=replicas)
    return final.assign(fd_fit=law(final["compute_gflops"].to_numpy())), law
