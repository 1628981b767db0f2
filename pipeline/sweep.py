"""Ray Tune sweep of the base learning rate, and the width-aware transfer check (Fig. 5b).

Each trial is a training run through :func:`pipeline.training.train_loop` (the loop every
worker of the ``train`` stage runs) with one ``train.lr_base``; ASHA stops trials whose FD proxy
(FD-classifier offline, FID-5K with Inception) lags at a rung. One MLflow run per trial,
nested under the sweep's run.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
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
    """Params of one trial: its lr_base, the sweep's length, FD proxy reported every rung.

    A trial trains on one worker with the trial's resources (sweep.cpus_per_trial,
    sweep.gpus_per_trial) at the study's batch; trials run side by side instead.
    """
    sw = params.sweep
    every = _report_every(params)
    overrides: dict[str, Any] = {
        "train.lr_base": lr_base,
        "train.iterations": sw.iterations,
        "train.kimg": 0.0,
        "train.workers": 1,
        "train.use_gpu": sw.gpus_per_trial > 0,
        "train.cpus_per_worker": sw.cpus_per_trial,
        "train.fd_every": every,
        "train.log_every": every,  # every report carries the proxy ASHA ranks on
        "train.checkpoint_every": every,
        "train.sample_every": 0,
    }
    if c_base is not None:
        overrides["train.c_base"] = c_base
    return with_overrides(params, overrides, check_paths=False)


def trial_name(config: dict[str, Any]) -> str:
    c_base = config.get("c_base")
    return f"lr{config['lr_base']:.3g}" + (f"_c{c_base}" if c_base else "")


def _trainable(params: Params, size: str, out_root: Path):
    def run_trial(config: dict[str, Any]) -> None:
        """One Tune trial: the training loop of the train stage, reporting through Tune.

        The trial trains in its own process rather than launching a Ray Train worker group:
        nested groups wait for CPUs that finished or ASHA-stopped trials have not yet given
        back (Ray's placement-group clean-up times out under load), and trials then hang.
        """
        from pipeline.training import DIVERGED, loop_config, train_loop

        p = trial_params(params, config["lr_base"], config.get("c_base"))
        out_dir = out_root / trial_name(config)
        train_loop(loop_config(p, size, out_dir, track=False, session="tune"))
        if (out_dir / DIVERGED).exists():  # rank it last rather than by its last good report
            tune.report({METRIC: float("inf"), "diverged": 1.0})

    return run_trial


def run_sweep(params: Params, size: str, out_dir: Path, lrs: list[float] | None = None,
              c_bases: list[int] | None = None, scheduler: bool = True) -> pd.DataFrame:
    """Run one Tune experiment over lr_base (x c_base) for ``size``; one row per trial.

    ``c_bases`` overrides the width the rule divides by: ``[C_model]`` uses lr_base
    unchanged at this size (the paper's "w/o eta_adapt"). Rerunning after a kill restores
    the Tune experiment in ``out_dir/tune`` and finishes the trials that had not ended.
    """
    init_ray()
    out_dir = Path(out_dir).resolve()
    lrs = lrs or lr_grid(params)
    storage, name = out_dir / "tune", experiment_name(params, size, lrs, c_bases)
    space: dict[str, Any] = {"lr_base": tune.grid_search(lrs)}
    if c_bases is not None:
        space["c_base"] = tune.grid_search(c_bases)
    trainable = tune.with_resources(_trainable(params, size, out_dir / "trials"),
                                    {"cpu": params.sweep.cpus_per_trial,
                                     "gpu": params.sweep.gpus_per_trial})
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
        print(f"restoring the Tune experiment in {path}: finished trials are kept")
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True, param_space=space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=asha,
                                        max_concurrent_trials=params.sweep.concurrent_trials),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      callbacks=[mlflow_cb]),
        )
    results = tuner.fit()
    return _trials_table(results, model_config(size).width, params)


def experiment_name(params: Params, size: str, lrs: list[float],
                    c_bases: list[int] | None) -> str:
    """``lr_sweep-<hash>`` over what shapes the trials: a rerun of the same sweep restores
    it, while changed params, shards or model code start a new experiment beside it."""
    from pipeline.training import run_name  # hashes train params, seed, size, shards, gat/

    key = json.dumps({"run": run_name(params, size), "sweep": params.to_dict()["sweep"],
                      "lrs": lrs, "c_bases": c_bases}, sort_keys=True)
    return f"lr_sweep-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _trials_table(results: tune.ResultGrid, width: int, params: Params) -> pd.DataFrame:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        fd = history[METRIC].dropna() if history is not None and METRIC in history else []
        diverged = history is not None and "diverged" in history and bool(
            history["diverged"].notna().any())
        lr_base = result.config["lr_base"]
        c_base = result.config.get("c_base", params.train.c_base)
        rows.append({
            "lr_base": lr_base,
            "c_base": c_base,
            "lr": lr_base * c_base / width,
            "fd": float(fd.iloc[-1]) if len(fd) else float("nan"),
            "best_fd": float(fd.min()) if len(fd) else float("nan"),
            "reports": len(fd),
            "stopped_early": not diverged and len(fd) < _expected_reports(params),
            "diverged": diverged,
            "error": str(result.error) if result.error else "",
        })
    return pd.DataFrame(rows).sort_values("lr_base").reset_index(drop=True)


def _report_every(params: Params) -> int:
    return max(1, params.sweep.grace_period)


def _expected_reports(params: Params) -> int:
    return max(1, params.sweep.iterations // _report_every(params))


def best_lr(table: pd.DataFrame) -> float:
    """lr_base of the trial with the lowest final proxy among trials that ran to the end."""
    finished = table[~table["stopped_early"] & ~table["diverged"] & table["fd"].notna()]
    if finished.empty:
        raise RuntimeError("no sweep trial finished: widen sweep.lr_min/lr_max or lengthen "
                           "sweep.iterations")
    return float(finished.loc[finished["fd"].idxmin(), "lr_base"])
