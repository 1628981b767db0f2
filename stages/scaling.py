"""Scaling: one table of every size and the compute-FD power law (paper Fig. 3c, Table 3).

Reads outputs/train/<SIZE>/metrics.json and outputs/eval/<SIZE>/metrics.json for every
size in study.sizes; writes outputs/scaling/scaling.csv (name, G and D params, GFLOPs, FD,
train images/s), a least-squares fit FD = a * GFLOPs^b in log-log with a bootstrap 95%
interval and the Pearson correlation of FD with GFLOPs (metrics.json), and scaling.png.
A size without results is named and left out; fewer than 3 sizes is an error.
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.files import atomic_path
from pipeline.params import OUTPUTS, Params, size_dir
from pipeline.scaling import PowerLaw, band, fit_power_law
from pipeline.stage import stage_main

OUT = OUTPUTS / "scaling"


def collect(params: Params) -> tuple[pd.DataFrame, list[str]]:
    """One row per size with results, and the sizes that have none (with why)."""
    rows, missing = [], []
    for size in params.study.sizes:
        train_file = size_dir("train", size) / "metrics.json"
        eval_file = size_dir("eval", size) / "metrics.json"
        absent = [str(f) for f in (train_file, eval_file) if not f.exists()]
        if absent:
            missing.append(f"{size} (no {', '.join(absent)})")
            continue
        train, ev = json.loads(train_file.read_text()), json.loads(eval_file.read_text())
        if not np.isfinite(ev.get("fd", np.nan)):
            missing.append(f"{size} (non-finite {ev.get('metric', 'FD')})")
            continue
        rows.append({"size": size, "g_params": ev["g_params"], "d_params": ev["d_params"],
                     "g_gflops": ev["g_gflops"], "fd": ev["fd"], "metric": ev["metric"],
                     "precision": ev.get("precision"), "recall": ev.get("recall"),
                     "train_images_per_s": train.get("images_per_s")})
    table = pd.DataFrame(rows)
    return (table.sort_values("g_gflops").reset_index(drop=True) if rows else table), missing


def plot(table: pd.DataFrame, law: PowerLaw, label: str, path) -> None:
    xs = np.geomspace(table["g_gflops"].min() * 0.8, table["g_gflops"].max() * 1.25, 100)
    lo, hi = band(law, table["g_gflops"], table["fd"], xs)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.fill_between(xs, lo, hi, alpha=0.2, label="95% bootstrap band")
    ax.plot(xs, law(xs), "-", label=f"{label} = {law.a:.3g} * GFLOPs^{law.b:.3f}")
    ax.scatter(table["g_gflops"], table["fd"], zorder=3, color="k")
    for _, row in table.iterrows():
        ax.annotate(row["size"], (row["g_gflops"], row["fd"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("G forward GFLOPs (one sample, multiply-add = 1)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs compute (Pearson r = {law.pearson_r:.2f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def run(params: Params, args: argparse.Namespace) -> None:
    table, missing = collect(params)
    for line in missing:
        print(f"scaling: left out {line}", file=sys.stderr)
    if len(table) < 3:
        sys.exit(f"error: the power-law fit needs results for at least 3 sizes; have "
                 f"{len(table)} ({', '.join(table.get('size', []))}); missing: "
                 f"{'; '.join(missing) or 'none'}")
    label = table["metric"].iloc[0]
    law = fit_power_law(table["g_gflops"], table["fd"], params.scaling.bootstrap,
                        params.study.seed)
    with atomic_path(OUT / "scaling.csv") as tmp:
        table.to_csv(tmp, index=False)
    plot(table, law, label, OUT / "scaling.png")
    metrics = {"metric": label, "a": law.a, "b": law.b, "a_ci_low": law.a_ci[0],
               "a_ci_high": law.a_ci[1], "b_ci_low": law.b_ci[0], "b_ci_high": law.b_ci[1],
               "pearson_r": law.pearson_r, "sizes": law.n, "missing": missing}
    tracking.record_metrics(params, OUT / "metrics.json", metrics, "scaling")
    with tracking.active_run(params):
        for name in ("scaling.csv", "scaling.png"):
            mlflow.log_artifact(str(OUT / name), "scaling")
    print(table.to_string(index=False))
    print(f"{label} = {law.a:.4g} * GFLOPs^{law.b:.4f} (b 95% CI {law.b_ci[0]:.3f}.."
          f"{law.b_ci[1]:.3f}); Pearson r(FD, GFLOPs) = {law.pearson_r:.3f}")


if __name__ == "__main__":
    stage_main(__doc__, run)
