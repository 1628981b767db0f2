"""Ray Tune sweep of train.lr_base, and the width-aware transfer check (paper Fig. 5b).

Off unless ``sweep.enabled: true``; ``sweep.transfer: true`` adds the transfer check in
both directions (a sweep at sweep.transfer_size, 2 extra runs there, 1 at sweep.size). Outputs in
results/sweep/: best.json (the best lr_base, also logged to MLflow), trials.csv and
lr_vs_fd.png (the sweep at sweep.size), transfer.csv and transfer.png (sweep.transfer_size
trained with the rule-adapted lr, at sweep.size's lr, and with its own sweep's best;
sweep.size with its own best and at sweep.transfer_size's lr).
To resume after a kill, run the same command again: Tune restores unfinished trials
(its experiments live in the workspace's outputs/tune/).
"""

from __future__ import annotations

import argparse

import pandas as pd

from gat.models import model_config
from pipeline import fidelity, tracking
from pipeline.config import Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.plots import sweep_plot, transfer_plot
from pipeline.stage import stage_main
from pipeline.sweep import TRIAL_COLUMNS, best_lr, lr_grid, run_sweep, transfer_check

OUT = LAYOUT.sweep


def run(params: Params, args: argparse.Namespace) -> None:
    if not params.sweep.enabled:  # results/sweep/ still holds the declared metric and plot
        print("sweep.enabled is false: nothing to do (set it true in params.yaml to sweep)")
        write_json(OUT / "best.json", {"enabled": False})
        write_trials(pd.DataFrame(columns=TRIAL_COLUMNS))
        return
    label = fidelity.proxy_name(params.runtime.fd_samples)
    size = params.sweep.size
    table = run_sweep(params, size)
    best = best_lr(table)
    write_trials(table)
    sweep_plot(table, label, size, OUT / "lr_vs_fd.png")
    transfer = transfer_check(params, table) if params.sweep.transfer else pd.DataFrame()
    if not transfer.empty:
        with atomic_path(OUT / "transfer.csv") as tmp:
            transfer.to_csv(tmp, index=False)
        transfer_plot(transfer, label, OUT / "transfer.png")
    result = {"enabled": True, "size": size, "best_lr_base": best, "metric": label,
              "trials": len(table), "stopped_early": int(table["stopped_early"].sum())}
    write_json(OUT / "best.json", result)
    tr, sweep_run = tracking.tracker(params), table["sweep_run"].iloc[0]
    tr.log_metrics(sweep_run, {"best_lr_base": best})
    for name in ("trials.csv", "lr_vs_fd.png", "transfer.csv", "transfer.png"):
        if (OUT / name).exists():
            tr.log_artifact(sweep_run, OUT / name)
    print(f"best lr_base at {size}: {best:.4g} ({label}); written to {OUT / 'best.json'}")


def write_trials(table: pd.DataFrame) -> None:
    with atomic_path(OUT / "trials.csv") as tmp:
        table.to_csv(tmp, index=False)


def derived(params: Params, args: argparse.Namespace) -> dict:
    """The trials' lr_base values in the order Tune runs them, and the widths involved."""
    sw = params.sweep
    return {"lr_base_grid": lr_grid(params), "width": model_config(sw.size).width,
            "transfer_width": model_config(sw.transfer_size).width}


if __name__ == "__main__":
    stage_main(__doc__, run, extra=derived)
