"""Scaling: one table of every size and the compute-FD power law (paper Fig. 3c, Table 3).

    python -m stages.scaling

Reads results/{train,eval}/<SIZE>/seed<N>/metrics.json of every size in study.sizes and
training seed in study.train_seeds. Writes to results/scaling/:
- runs.csv: one row per size and seed;
- scaling.csv: one row per size: G and D params, G GFLOPs, the seeds' mean FD (FID or
  FD-classifier) with its spread (fd_std, fd_min, fd_max, seeds), precision, recall,
  class accuracy, train images/s, and the fitted FD at that size (the dvc plot's data);
- metrics.json: FD = a * GFLOPs^b fitted by least squares in log-log on the means, 95%
  bootstrap intervals (scaling.bootstrap draws, resampling sizes and, within each, seeds),
  Pearson r of FD with GFLOPs (the paper: -0.95);
- scaling.png: every seed's point, the means with their range, fit and bootstrap band.
The floors (results/data/floors.json: real and tokenizer-reconstructed images) are drawn
as lines and added to metrics.json. All logged to the MLflow study run of the sizes'
training configuration, with the stand-ins' quality (results/data/*.json). A size without
usable results is named and left out; fewer than 3 sizes left is an error (exit status 1),
and so are sizes trained under different configurations (a partial experiment: run
`dvc repro`).
"""

from __future__ import annotations

import argparse
import sys

from pipeline import fidelity, tracking
from pipeline.config import Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.plots import compute_plot, note_plot, scaling_plot
from pipeline.scaling import (
    ScalingError,
    check_table,
    collect,
    compute_law,
    fit_metrics,
    fit_sizes,
    read_json,
    trajectories,
)
from pipeline.stage import stage_main

OUT = LAYOUT.scaling
STAND_INS = ("tokenizer", "teacher", "classifier", "encode", "floors")
FLOORS = {"real": "real images", "reconstructed": "tokenizer reconstruction"}


def compute(params: Params) -> dict:
    """The paper's Fig. 21 when the training logged its FD proxy (runtime.fd_every > 0):
    trajectories.csv, compute.png, and the law's a and b with their intervals."""
    traj = trajectories(params.study.sizes, params.study.train_seeds)
    with atomic_path(OUT / "trajectories.csv") as tmp:
        traj.to_csv(tmp, index=False)
    found = compute_law(traj, params.scaling.bootstrap, params.study.seed)
    if found is None:
        why = ("no FD trajectories of 3 sizes: training logs its FD proxy only with "
               "runtime.fd_every > 0")
        print(f"scaling: {why}; the compute law (Fig. 21) is left out", file=sys.stderr)
        note_plot(f"Fig. 21 not recorded:\n{why}", OUT / "compute.png")
        return {"compute_law": "not recorded (runtime.fd_every is 0)"}
    final, law = found
    label = fidelity.proxy_name(params.runtime.fd_samples)
    compute_plot(traj, final, law, label, OUT / "compute.png")
    print(f"{label} = {law.a:.4g} * C^{law.b:.4f} (b 95% CI {law.b_ci[0]:.3f}..{law.b_ci[1]:.3f})"
          f" over training compute C; the paper: FID-50K = 3.52e5 * C^-0.456")
    return {"compute_metric": label, "compute_a": law.a, "compute_b": law.b,
            "compute_b_ci_low": law.b_ci[0], "compute_b_ci_high": law.b_ci[1],
            "compute_a_ci_low": law.a_ci[0], "compute_a_ci_high": law.a_ci[1]}


def log_study(params: Params, study_key: str, fit: dict) -> None:
    """The fit, the table and plot, and the stand-ins' quality, into the study run."""
    tr = tracking.tracker(params)
    run_id = tracking.study_run(tr, params, study_key)
    tr.log_metrics(run_id, {f"scaling.{k}": v for k, v in fit.items()})
    for stage in STAND_INS:
        found, _ = read_json(LAYOUT.data_metrics(stage))
        tr.log_metrics(run_id, {f"{stage}.{k}": v for k, v in (found or {}).items()})
    for name in ("scaling.csv", "runs.csv", "scaling.png", "metrics.json",
                 "trajectories.csv", "compute.png"):
        tr.log_artifact(run_id, OUT / name, "scaling")
    tr.set_status(run_id, "FINISHED")


def run(params: Params, args: argparse.Namespace) -> None:
    runs, missing = collect(params.study.sizes, params.study.train_seeds)
    for line in missing:
        print(f"scaling: left out {line}", file=sys.stderr)
    try:
        label, study_key = check_table(runs, missing)
    except ScalingError as err:
        sys.exit(f"error: {err}")
    table, law = fit_sizes(runs, params.scaling.bootstrap, params.study.seed)
    for name, frame in (("scaling.csv", table), ("runs.csv", runs)):
        with atomic_path(OUT / name) as tmp:
            frame.to_csv(tmp, index=False)
    floors, _ = read_json(LAYOUT.data_metrics("floors"))
    floor_fd = {name: floors[f"{row}_fd"] for row, name in FLOORS.items()
                if floors and f"{row}_fd" in floors}
    scaling_plot(table, law, label, OUT / "scaling.png", floor_fd, runs)
    fit = {**fit_metrics(law, label, missing, int(table["seeds"].max())),
           **{f"floor_{row}_fd": floors[f"{row}_fd"] for row in FLOORS if floor_fd},
           **compute(params)}
    write_json(OUT / "metrics.json", fit)
    log_study(params, study_key, fit)
    print(table.to_string(index=False))
    print(f"{label} = {law.a:.4g} * GFLOPs^{law.b:.4f} (b 95% CI {law.b_ci[0]:.3f}.."
          f"{law.b_ci[1]:.3f}); Pearson r(FD, GFLOPs) = {law.pearson_r:.3f}")


if __name__ == "__main__":
    stage_main(__doc__, run)
