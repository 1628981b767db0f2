"""Scaling: one table of every size and the compute-FD power law (paper Fig. 3c, Table 3).

    python -m stages.scaling

Reads results/train/<SIZE>/metrics.json and results/eval/<SIZE>/metrics.json of every
size in study.sizes. Writes to results/scaling/:
- scaling.csv: size, G and D params, G GFLOPs, FD (FID or FD-classifier), precision,
  recall, train images/s, and the fitted FD at that size (the dvc plot's data);
- metrics.json: FD = a * GFLOPs^b fitted by least squares in log-log, 95% bootstrap
  intervals (scaling.bootstrap draws), Pearson r of FD with GFLOPs (the paper: -0.95);
- scaling.png: points, fit and bootstrap band, log-log.
All logged to the MLflow study run of the sizes' training configuration, with the
stand-ins' quality (results/data/*.json). A size without usable results is named and left
out; fewer than 3 sizes left is an error (exit status 1), and so are sizes trained under
different configurations (a partial experiment: run `dvc repro`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in DVC runs
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.config import Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.scaling import MIN_POINTS, PowerLaw, fit_power_law
from pipeline.stage import stage_main

OUT = LAYOUT.scaling
COLUMNS = ["size", "g_params", "d_params", "g_gflops", "fd", "metric", "precision", "recall",
           "class_accuracy", "train_images_per_s", "study_key"]
STAND_INS = ("tokenizer", "teacher", "classifier", "encode")


def _read(path: Path) -> tuple[dict | None, str]:
    """(contents, "") or (None, why it cannot be used)."""
    if not path.exists():
        return None, f"no {path}"
    try:
        return json.loads(path.read_text()), ""
    except (OSError, json.JSONDecodeError) as err:
        return None, f"unreadable {path} ({err})"


def size_row(size: str) -> tuple[dict | None, str]:
    """One size's table row, or (None, why it is left out)."""
    train, why_train = _read(LAYOUT.train_results(size) / "metrics.json")
    ev, why_eval = _read(LAYOUT.eval_metrics(size))
    if train is None or ev is None:
        return None, "; ".join(w for w in (why_train, why_eval) if w)
    fd, gflops = ev.get("fd"), ev.get("g_gflops")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (fd, gflops)):
        return None, f"{ev.get('metric', 'FD')} {fd}, GFLOPs {gflops}: not positive finite numbers"
    row = {k: ev.get(k) for k in COLUMNS}
    row.update(size=size, train_images_per_s=train.get("images_per_s"),
               study_key=train.get("study_key", ""))
    if ev.get("run_key") != train.get("run_key"):
        return None, (f"evaluated generator {ev.get('run_key')} is not the trained one "
                      f"{train.get('run_key')}: rerun evaluate@{size}")
    return row, ""


def collect(params: Params) -> tuple[pd.DataFrame, list[str]]:
    """The table of sizes with results (by GFLOPs), and "SIZE (why)" for the others."""
    rows, missing = [], []
    for size in params.study.sizes:
        row, why = size_row(size)
        if row is None:
            missing.append(f"{size} ({why})")
        else:
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("g_gflops", ignore_index=True), missing


def plot(table: pd.DataFrame, law: PowerLaw, label: str, path: Path) -> None:
    """Log-log: the sizes, the fitted law and its 95% bootstrap band."""
    xs = np.geomspace(table["g_gflops"].min() / 1.25, table["g_gflops"].max() * 1.25, 100)
    lo, hi = law.band(xs)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.fill_between(xs, lo, hi, alpha=0.2, label="95% bootstrap band")
    ax.plot(xs, law(xs), "-", label=f"{label} = {law.a:.3g} * GFLOPs^{law.b:.3f}")
    ax.scatter(table["g_gflops"], table["fd"], zorder=3, color="k", label="sizes")
    for _, row in table.iterrows():
        ax.annotate(row["size"], (row["g_gflops"], row["fd"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="G forward GFLOPs (one sample, multiply-add = 1)",
           ylabel=label, title=f"{label} vs compute (Pearson r = {law.pearson_r:.2f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def fit_metrics(law: PowerLaw, label: str, missing: list[str]) -> dict:
    return {"metric": label, "a": law.a, "b": law.b, "a_ci_low": law.a_ci[0],
            "a_ci_high": law.a_ci[1], "b_ci_low": law.b_ci[0], "b_ci_high": law.b_ci[1],
            "pearson_r": law.pearson_r, "pearson_r_log": law.pearson_r_log, "sizes": law.n,
            "bootstrap_fits": len(law.boot), "missing": missing}


def log_study(params: Params, study_key: str, fit: dict) -> None:
    """The fit, the table and plot, and the stand-ins' quality, into the study run."""
    tr = tracking.tracker(params)
    run_id = tracking.study_run(tr, params, study_key)
    tr.log_metrics(run_id, {f"scaling.{k}": v for k, v in fit.items()})
    for stage in STAND_INS:
        found, _ = _read(LAYOUT.data_metrics(stage))
        tr.log_metrics(run_id, {f"{stage}.{k}": v for k, v in (found or {}).items()})
    for name in ("scaling.csv", "scaling.png", "metrics.json"):
        tr.log_artifact(run_id, OUT / name, "scaling")
    tr.set_status(run_id, "FINISHED")


def run(params: Params, args: argparse.Namespace) -> None:
    table, missing = collect(params)
    for line in missing:
        print(f"scaling: left out {line}", file=sys.stderr)
    if len(table) < MIN_POINTS:
        have = ", ".join(table["size"]) or "none"
        sys.exit(f"error: the power-law fit needs results for at least {MIN_POINTS} sizes; "
                 f"have {len(table)} ({have}). Missing: {'; '.join(missing) or 'none'}. "
                 "Run their train and evaluate stages, or list more sizes in study.sizes.")
    labels = table["metric"].unique()
    if len(labels) > 1:  # FID and FD-classifier are different scales: never fit them together
        sys.exit(f"error: sizes were evaluated with different metrics {list(labels)}; "
                 "re-evaluate them all with one evaluator.source (dvc repro)")
    studies = sorted(set(table["study_key"]))
    if len(studies) > 1:
        sys.exit(f"error: the sizes were trained under different configurations (study keys "
                 f"{', '.join(studies)}), as a partial experiment leaves them; run "
                 "`dvc repro` to bring every size to the current params")
    law = fit_power_law(table["g_gflops"], table["fd"], params.scaling.bootstrap,
                        params.study.seed)
    table["fd_fit"] = law(table["g_gflops"].to_numpy())
    with atomic_path(OUT / "scaling.csv") as tmp:
        table.to_csv(tmp, index=False)
    plot(table, law, labels[0], OUT / "scaling.png")
    fit = fit_metrics(law, labels[0], missing)
    write_json(OUT / "metrics.json", fit)
    log_study(params, studies[0], fit)
    print(table.to_string(index=False))
    print(f"{labels[0]} = {law.a:.4g} * GFLOPs^{law.b:.4f} (b 95% CI {law.b_ci[0]:.3f}.."
          f"{law.b_ci[1]:.3f}); Pearson r(FD, GFLOPs) = {law.pearson_r:.3f}")


if __name__ == "__main__":
    stage_main(__doc__, run)
