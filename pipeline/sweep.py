"""Ray Tune sweep of the base learning rate, and the width-aware transfer check (Fig. 5b).

Each trial is a training run through :class:`pipeline.training.worker.Worker` (the loop
every worker of the ``train`` stage runs) with one ``train.lr_base``; ASHA stops trials
whose FD proxy (FD-classifier offline, FID with Inception) lags at a rung. One MLflow run
per trial, nested under the sweep's run (logged by the driver). Tune's experiments live in
the workspace (``outputs/tune/<name>``, shared by every DVC experiment) or in
``<runtime.storage>/tune``, named by a hash of what shapes the trials: the same sweep
restores, a changed one starts beside it. A trial whose node dies restarts from its last
checkpoint on another node (``runtime.max_failures``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from gat.train import lr_base_at, model_lr
from pipeline import cluster, tracking
from pipeline.config import Params, with_overrides
from pipeline.identity import run_identity
from pipeline.layout import LAYOUT, Layout
from pipeline.ray_utils import init_ray
from pipeline.storage import StorePath
from pipeline.training.job import TrainJob
from pipeline.training.worker import trial_checkpoint

METRIC = "fd"  # the proxy reported by training every runtime.fd_every steps
# trials.csv's columns (one row per trial); a disabled sweep writes them with no rows, so
# that dvc.yaml's sweep plot has its file in every experiment
TRIAL_COLUMNS = ("lr_base", "lr", "fd", "best_fd", "reports", "stopped_early", "diverged",
                 "error")


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


def trial_params(params: Params, lr_base: float) -> Params:
    """Params of one trial: its lr_base, the sweep's length, FD proxy reported every rung.

    A trial trains on one worker with the trial's resources (runtime.trial_cpus,
    runtime.trial_gpus) at the study's batch; trials run side by side instead.
    """
    sw, rt = params.sweep, params.runtime
    overrides: dict[str, Any] = {
        "train.lr_base": lr_base, "train.iterations": sw.iterations, "train.kimg": 0.0,
        "runtime.workers": 1, "runtime.use_gpu": rt.trial_gpus > 0,
        "runtime.cpus_per_worker": rt.trial_cpus, "runtime.fd_every": sw.grace_period,
        "runtime.log_every": sw.grace_period,  # every report carries the proxy ASHA reads
        "runtime.checkpoint_every": sw.grace_period, "runtime.sample_every": 0,
    }
    return with_overrides(params, overrides, check_paths=False)


def trial_name(config: dict[str, Any]) -> str:
    return f"lr{config['lr_base']:.3g}"


def trial_jobs(params: Params, size: str, trials: Path | StorePath, lrs: list[float],
               layout: Layout, debug: dict[str, Any] | None = None) -> dict[str, TrainJob]:
    """Trial name -> its job, built here on the driver (identity, manifests, folders), so a
    trial on another node reads nothing of this checkout but what the job names. A
    trial's state (live log, diverged.json, generator) lives in ``trials/<name>`` of the
    experiment. ``debug``: the workers' test hooks (see ``Worker._debug_hooks``)."""
    from pipeline.training.job import make_job

    jobs = {}
    for lr in lrs:
        name = trial_name({"lr_base": lr})
        p = trial_params(params, lr)
        out = trials / name
        jobs[name] = replace(make_job(p, size, p.study.train_seeds[0], layout, session="tune",
                                      debug=debug or {}),
                             run_dir=out, generator_dir=out / "generator", results_dir=out)
    return jobs


def _trainable(jobs: dict[str, TrainJob]):
    def run_trial(config: dict[str, Any]) -> None:
        """One Tune trial: the train stage's worker loop, reporting through Tune.

        The trial trains in its own process rather than launching a Ray Train worker group:
        nested groups wait for CPUs that finished or ASHA-stopped trials have not yet given
        back (Ray's placement-group clean-up times out under load), and trials then hang.
        """
        from pipeline.training.outputs import read_diverged
        from pipeline.training.worker import Worker

        job = jobs[trial_name(config)]
        job.run_dir.mkdir(parents=True, exist_ok=True)
        Worker(job).run()
        if read_diverged(job.run_dir):  # rank it last rather than by its last good report
            tune.report({METRIC: float("inf"), "diverged": 1.0})

    return run_trial


def experiment_name(params: Params, size: str, lrs: list[float], layout: Layout = LAYOUT
                    ) -> str:
    """``lr_sweep-<hash>`` over what shapes the trials: the training inputs at this size
    (train params, the first training seed, shards, teacher, code), the sweep params and
    the grid."""
    key = json.dumps({"run": run_identity(params, size, params.study.train_seeds[0],
                                          layout).base,
                      "sweep": params.section("sweep"), "lrs": lrs},
                     sort_keys=True)
    return f"lr_sweep-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def run_sweep(params: Params, size: str, lrs: list[float] | None = None,
              scheduler: bool = True, layout: Layout = LAYOUT,
              debug: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run one Tune experiment over ``lrs`` (lr_base values; default the sweep's grid) at
    ``size``; one row per trial. Rerunning after a kill restores the Tune experiment and
    finishes the trials that had not ended."""
    init_ray()
    lrs = lrs or lr_grid(params)
    name = experiment_name(params, size, lrs, layout)
    space: dict[str, Any] = {"lr_base": tune.grid_search(lrs)}
    rt = params.runtime
    storage = layout.tune_state(rt.storage)
    jobs = trial_jobs(params, size, storage / name / "trials", lrs, layout, debug)
    check_cluster(next(iter(jobs.values())), storage)
    trainable = tune.with_resources(_trainable(jobs), {"cpu": rt.trial_cpus,
                                                       "gpu": rt.trial_gpus})
    tr = tracking.tracker(params, layout)
    sweep_run = tr.find_or_create(
        {tracking.ROLE: "sweep", tracking.RUN_KEY: name}, f"lr-sweep {size} {name[-6:]}",
        params={"size": size, "lrs": ",".join(f"{x:.3g}" for x in lrs),
                "asha": scheduler,
                **{f"sweep.{k}": v for k, v in params.section("sweep").items()}},
        tags={tracking.SIZE: size})
    mlflow_cb = MLflowLoggerCallback(
        tracking_uri=tr.uri, experiment_name=params.tracking.experiment,
        tags={"mlflow.parentRunId": sweep_run, tracking.ROLE: "trial", tracking.SIZE: size,
              **tracking.source_tags(layout)})
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
            trainable, param_space=space,
            # A finished trial's process takes the next trial (no new process importing
            # torch, diffusers and gat: the tiny sweep's CPU 0.71x); the results are the
            # fresh processes' to the bit (evaluator() leaves the RNG alone: pipeline/fidelity.py).
            tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=asha,
                                        max_concurrent_trials=rt.concurrent_trials,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), callbacks=[mlflow_cb], verbose=1,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                # a trial whose node dies restarts from its last checkpoint elsewhere
                failure_config=tune.FailureConfig(max_failures=rt.max_failures)),
        )
    with tracking.process_uris_kept():  # the MLflow callback sets them process-wide
        table = _trials_table(tuner.fit(), size, params)
    for job in jobs.values():  # what trials stopped at a report left (Tune holds a copy)
        shutil.rmtree(trial_checkpoint(job.run_dir), ignore_errors=True)
    tr.set_status(sweep_run, "FINISHED")
    return table.assign(sweep_run=sweep_run)


def check_cluster(job: TrainJob, storage: Path | StorePath) -> None:
    """Refuse a sweep whose trial (runtime.trial_cpus, runtime.trial_gpus) fits on no node,
    or (on several nodes) whose storage, shards or checkout files some node cannot see."""
    from pipeline.training.driver import check_proxy, worker_reads

    check_proxy(job)
    rt = job.params.runtime
    nodes = cluster.alive_nodes()
    hosts = cluster.check_resources(nodes, 1, rt.trial_cpus, rt.trial_gpus, "PACK",
                                    "one sweep trial (runtime.trial_cpus, runtime.trial_gpus)",
                                    rt.autoscale)
    if len(nodes) > 1:
        looks = cluster.data_looks([job.shards, *([job.teacher] if job.teacher else [])])
        cluster.probe(hosts, looks + cluster.checkout_paths(worker_reads(job)), state=storage)


def _trials_table(results: tune.ResultGrid, size: str, params: Params) -> pd.DataFrame:
    """One row per trial. Its reports are counted by Tune's ``training_iteration``: a trial
    restored after its node died keeps counting there, while its ``metrics_dataframe``
    holds only the reports since the restore."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        fd = history[METRIC].dropna() if history is not None and METRIC in history else []
        diverged = bool((result.metrics or {}).get("diverged")) or (
            history is not None and "diverged" in history
            and bool(history["diverged"].notna().any()))
        reports = int((result.metrics or {}).get("training_iteration", len(fd))) - diverged
        lr_base = result.config["lr_base"]

        rows.append({
            "lr_base": lr_base,
            "lr": model_lr(replace(params.train, lr_base=lr_base), size),
            "fd": float(fd.iloc[-1]) if len(fd) else float("nan"),
            "best_fd": float(fd.min()) if len(fd) else float("nan"),
            "reports": reports,
            "stopped_early": not diverged and reports < _expected_reports(params),
            "diverged": diverged,
            "error": str(result.error) if result.error else "",
        })
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS).sort_values("lr_base").reset_index(
        drop=True)


def transfer_check(params: Params, base: pd.DataFrame) -> pd.DataFrame:
    """The width-aware rule checked both ways (paper Fig. 5b), from the best ``lr_base`` of
    the sweep ``base`` at sweep.size (small): sweep.transfer_size (large) trained with the
    rule, at the small size's lr, and with the best of its own sweep; the small size with
    its own best and at the large size's lr. One row per (size, how): lr, final proxy."""
    small, large = params.sweep.size, params.sweep.transfer_size
    best = best_lr(base)
    tuned = replace(params.train, lr_base=best)
    at_small, at_large = lr_base_at(tuned, large, small), lr_base_at(tuned, small, large)
    own = run_sweep(params, large)
    arms = run_sweep(params, large, lrs=[best, at_small], scheduler=False)
    back = run_sweep(params, small, lrs=[at_large], scheduler=False)
    picks = [(large, "width-aware rule", arms, best), (large, f"at {small}'s lr", arms, at_small),
             (large, "own sweep's best", own, best_lr(own)),
             (small, "own sweep's best", base, best), (small, f"at {large}'s lr", back, at_large)]
    rows = []
    for size, how, table, lr_base in picks:
        found = table[np.isclose(table["lr_base"], lr_base)].head(1)
        row = found.iloc[0] if len(found) else None
        rows.append({"size": size, "how": how, "lr_base": lr_base,
                     "lr": float(row["lr"]) if row is not None else float("nan"),
                     "fd": float(row["fd"]) if row is not None else float("nan")})
    return pd.DataFrame(rows)


def _expected_reports(params: Params) -> int:
    return max(1, params.sweep.iterations // params.sweep.grace_period)


def best_lr(table: pd.DataFrame) -> float:
    """lr_base of the trial with the lowest final proxy among trials that ran to the end."""
    finished = table[~table["stopped_early"] & ~table["diverged"] & table["fd"].notna()]
    if finished.empty:
        raise RuntimeError("no sweep trial finished: widen sweep.lr_min/lr_max or lengthen "
                           "sweep.iterations")
    return float(finished.loc[finished["fd"].idxmin(), "lr_base"])
