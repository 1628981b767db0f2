"""What a Ray Train run costs whatever its length: a local Ray start, then ``--runs``
TorchTrainer runs of one worker whose training function does nothing but import torch.
Run it under ``cpu_by_process.py`` to see the CPU by kind of process (controller, worker,
the helper actors Ray Train starts per run, Ray's daemons); alternate settings to compare:

    python benchmarks/cpu_by_process.py -- python benchmarks/ray_train_overhead.py --runs 3
    RAY_enable_worker_prestart=0 RAY_prestart_worker_first_driver=0 \\
        RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0 \\
        python benchmarks/cpu_by_process.py -- python benchmarks/ray_train_overhead.py --runs 3

Measured 2026-12-07 on the project's 2-core machine, the machine to itself, one torch
thread and no dashboard (``OMP_NUM_THREADS=1 GAT_RAY_DASHBOARD=0``, as the test suite),
``--runs 3`` alternated twice: 42.5 / 42.2 CPU-s as is, 39.7 / 38.8 with the three
variables above (what ``tests/conftest.py`` sets). With ``--runs 2``: per run the
controller 3.1 CPU-s, the worker 2.8, the placement-group cleaner 1.75, the
synchronization actor and the dataset manager 1.35 each; the Ray start ~5.
``--seconds 30`` (runs that last, as real ones do) with Ray Train's health-check interval
at 0.2 s (the suite's) and at 2 s (Ray's default), alternated twice: controller 7.3 / 7.4
against 7.1 / 7.0 CPU-s for the two runs, worker 6.7 / 6.4 against 6.1 / 6.0: the
controller's polling costs ~0.5 CPU-s per 30-s run, not a lever. Prints the wall time of
the runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def _train(config: dict) -> None:
    import torch  # noqa: F401  (what every real worker imports first)

    time.sleep(config["seconds"])  # a run that lasts: what the controller's polling costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="TorchTrainer runs, one after the other")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="how long each run's training function sleeps (default 0)")
    args = parser.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.ray_utils import init_ray

    init_ray(num_cpus=2)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        for i in range(args.runs):
            TorchTrainer(_train, train_loop_config={"seconds": args.seconds},
                         scaling_config=ScalingConfig(num_workers=1),
                         run_config=RunConfig(storage_path=storage, name=f"run{i}")).fit()
    print(f"{args.runs} runs: {time.perf_counter() - start:.1f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
