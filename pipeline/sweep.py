"""Ray Tune sweep of the base learning rate, and the width-aware transfer check (Fig. 5b).

Each trial is a training run through :func:`pipeline.training.run_training` (the same code
as the ``train`` stage) with one ``train.lr_base``; ASHA stops trials whose FD proxy
(FD-classifier offline, FID-5K with Inception) lags at a rung. One MLflow run per trial,
nested under the sweep's run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from gat.models import model_config
from pipeline import tracking
from pipeline.params import Params, with_overrides
from pipeline.ray_utils import init_ray

METRIC = "fd"  # the proxy reported by training every train.fd_every steps


def lr_grid(params: Params) -> list[float]:
    """``sweep.num_trials`` learning rates spaced evenly in log between lr_min and lr_max.

    A grid (rather than random draws) makes sweeps comparable across sizes and reruns.
    """
    sw = params.sweep
    if sw.num_trials == 1:
        return [math.sqrt(sw.lr_min * sw.lr_max)]
    ratio = (sw.lr_max / sw.lr_min) ** (1 / (sw.num_trials - 1))
    grid = [sw.lr_min * ratio**i for i in range(sw.num_trials)]
    # Centre first, then outward: trials run one at a time, and ASHA judges each against
    # those before it, so a sensible first trial lets it stop the extremes early.
    mid = (len(grid) - 1) / 2
    return sorted(grid, key=lambda lr: abs(grid.index(lr) - mid))


def trial_params(params: Params, lr_base: float, c_base: int | None = None) -> Params:
    """Params of one trial: its lr_base, the sweep's length, FD proxy reported every rung."""
    sw = params.sweep
    every = _report_every(params)
    overrides: dict[str, Any] = {
        "train.lr_base": lr_base,
        "train.iterations": sw.iterations,
        "train.kimg": 0.0,
        "train.fd_every": every,
        "train.log_every": every,  # every report carries the proxy ASHA ranks on
        "train.checkpoint_every": every,
        "train.sample_every": 0,
    }
    if c_base is not None:
        overrides["train.c_base"] = c_base
    return with_overrides(params, overrides, check_paths=False)


def _trainable(params: Params, size: str, out_root: Path):
    def run_trial(config: dict[str, Any]) -> None:
        from pipeline.training import run_training  # imported in the trial's worker

        p = trial_params(params, config["lr_base"], config.get("c_base"))
        name = f"lr{config['lr_base']:.3g}" + (f"_c{config['c_base']}" if config.get("c_base")
                                               else "")
        trial_cpus = params.sweep.cpus_per_trial
        before = _placement_groups(trial_cpus)
        try:
            run_training(p, size, out_root / name, callbacks=[TuneReportCallback()],
                         track=False)
        finally:
            _remove_placement_groups(_placement_groups(trial_cpus) - before)

    return run_trial


def _placement_groups(trial_cpus: float) -> set[str]:
    """Live placement groups other than Tune's own trial groups (one bundle of trial_cpus).

    Tune creates the next trial's group while a trial runs: it must not be touched.
    """
    from ray.util import placement_group_table

    def is_trial_group(info: dict) -> bool:
        bundles = list(info.get("bundles", {}).values())
        return len(bundles) == 1 and bundles[0].get("CPU") == trial_cpus

    return {pg_id for pg_id, info in placement_group_table().items()
            if info["state"] != "REMOVED" and not is_trial_group(info)}


def _remove_placement_groups(pg_ids: set[str]) -> None:
    """Free what a finished or stopped trial's TorchTrainer left behind.

    Under CPU load Ray Train's own clean-up can time out ("Failed to stop
    PlacementGroupCleaner"), leaving the workers' placement group holding its CPUs, and
    the next trial then waits forever for workers. Trials run one at a time, so every group
    created during a trial is that trial's.
    """
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg_id in pg_ids:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


def run_sweep(params: Params, size: str, out_dir: Path, lrs: list[float] | None = None,
              c_bases: list[int] | None = None, scheduler: bool = True) -> pd.DataFrame:
    """Run one Tune experiment over lr_base (x c_base) for ``size``; one row per trial.

    ``c_bases`` overrides the width the rule divides by: ``[C_model]`` uses lr_base
    unchanged at this size (the paper's "w/o eta_adapt"). Rerunning after a kill restores
    the Tune experiment in ``out_dir/tune`` and finishes the trials that had not ended.
    """
    init_ray()
    out_dir = Path(out_dir).resolve()
    storage, name = out_dir / "tune", "lr_sweep"
    lrs = lrs or lr_grid(params)
    space: dict[str, Any] = {"lr_base": tune.grid_search(lrs)}
    if c_bases is not None:
        space["c_base"] = tune.grid_search(c_bases)
    trainable = tune.with_resources(_trainable(params, size, out_dir / "trials"),
                                    {"cpu": params.sweep.cpus_per_trial})
    sweep_run = tracking.size_run_id(params, size, role="sweep")
    mlflow_cb = MLflowLoggerCallback(
        tracking_uri=tracking.tracking_uri(params),
        experiment_name=params.tracking.experiment,
        tags={"mlflow.parentRunId": sweep_run, tracking.STUDY_TAG: params.study.name,
              tracking.ROLE_TAG: "trial", tracking.SIZE_TAG: size},
    )
    # One Tune iteration = one FD report (every sweep.grace_period steps): ASHA's first rung
    # compares trials after grace_period training steps.
    asha = ASHAScheduler(time_attr="training_iteration", grace_period=1, reduction_factor=2,
                         max_t=_expected_reports(params)) if scheduler else None
    path = storage / name
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True, param_space=space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=asha,
                                        max_concurrent_trials=1),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      callbacks=[mlflow_cb]),
        )
    results = tuner.fit()
    return _trials_table(results, model_config(size).width, params)


def _trials_table(results: tune.ResultGrid, width: int, params: Params) -> pd.DataFrame:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        fd = history[METRIC].dropna() if history is not None and METRIC in history else []
        lr_base = result.config["lr_base"]
        c_base = result.config.get("c_base", params.train.c_base)
        rows.append({
            "lr_base": lr_base,
            "c_base": c_base,
            "lr": lr_base * c_base / width,
            "fd": float(fd.iloc[-1]) if len(fd) else float("nan"),
            "best_fd": float(fd.min()) if len(fd) else float("nan"),
            "reports": len(fd),
            "stopped_early": len(fd) < _expected_reports(params),
            "error": str(result.error) if result.error else "",
        })
    return pd.DataFrame(rows).sort_values("lr_base").reset_index(drop=True)


def _report_every(params: Params) -> int:
    return max(1, params.sweep.grace_period)


def _expected_reports(params: Params) -> int:
    return max(1, params.sweep.iterations // _report_every(params))


def best_lr(table: pd.DataFrame) -> float:
    """lr_base of the trial with the lowest final proxy among trials that ran to the end."""
    finished = table[~table["stopped_early"] & table["fd"].notna()]
    if finished.empty:
        raise RuntimeError("no sweep trial finished: widen sweep.lr_min/lr_max or lengthen "
                           "sweep.iterations")
    return float(finished.loc[finished["fd"].idxmin(), "lr_base"])
