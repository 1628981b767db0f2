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
import sys

from pipeline import tracking
from pipeline.config import Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.plots import scaling_plot
from pipeline.scaling import (
    ScalingError,
    check_table,
    collect,
    fit_metrics,
    fit_power_law,
    read_json,
)
from pipeline.stage import stage_main

OUT = LAYOUT.scaling
STAND_INS = ("tokenizer", "teacher", "classifier", "encode")


def log_study(params: Params, study_key: str, fit: dict) -> None:
    """The fit, the table and plot, and the stand-ins' quality, into the study run."""
    tr = tracking.tracker(params)
    run_id = tracking.study_run(tr, params, study_key)
    tr.log_metrics(run_id, {f"scaling.{k}": v for k, v in fit.items()})
    for stage in STAND_INS:
        found, _ = read_json(LAYOUT.data_metrics(stage))
        tr.log_metrics(run_id, {f"{stage}.{k}": v for k, v in (found or {}).items()})
    for name in ("scaling.csv", "scaling.png", "metrics.json"):
        tr.log_artifact(run_id, OUT / name, "scaling")
    tr.set_status(run_id, "FINISHED")


def run(params: Params, args: argparse.Namespace) -> None:
    table, missing = collect(params.study.sizes)
    for line in missing:
        print(f"scaling: left out {line}", file=sys.stderr)
    try:
        label, study_key = check_table(table, missing)
    except ScalingError as err:
        sys.exit(f"error: {err}")
    law = fit_power_law(table["g_gflops"], table["fd"], params.scaling.bootstrap,
                        params.study.seed)
    table["fd_fit"] = law(table["g_gflops"].to_numpy())
    with atomic_path(OUT / "scaling.csv") as tmp:
        table.to_csv(tmp, index=False)
    scaling_plot(table, law, label, OUT / "scaling.png")
    fit = fit_metrics(law, label, missing)
    write_json(OUT / "metrics.json", fit)
    log_study(params, study_key, fit)
    print(table.to_string(index=False))
    print(f"{label} = {law.a:.4g} * GFLOPs^{law.b:.4f} (b 95% CI {law.b_ci[0]:.3f}.."
          f"{law.b_ci[1]:.3f}); Pearson r(FD, GFLOPs) = {law.pearson_r:.3f}")


if __name__ == "__main__":
    stage_main(__doc__, run)
