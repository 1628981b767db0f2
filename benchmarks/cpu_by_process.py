"""Where a command's CPU goes, by kind of process (Linux): polls every process's CPU time
while the command runs and sums it per kind (a stage, a Ray Train actor, Ray's daemons...).

    python benchmarks/cpu_by_process.py --json cpu.json -- python -m pytest -q
    python benchmarks/cpu_by_process.py -- bash scripts/repro.sh

Every process of the machine is counted, not only the command's: run it with the machine
to itself. Polled every ``--every`` s (default 0.5): a process that lives shorter than that
is missed, and one that ends loses its last interval, so the total is a lower bound.
Prints one row per kind (CPU-s, share, processes), then the groups of docs/TESTS.md; the
command's exit status is this script's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

RAY_DAEMONS = ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py")
# Kinds summed into groups (the rest are printed by kind only).
GROUPS = {
    "Ray Train workers": ["ray::RayTrainWorker"],
    "Ray Train controllers": ["ray::TrainController"],
    "Ray Train helper actors": ["ray::PlacementGroupCleaner", "ray::DatasetManager",
                                "ray::PreemptionWatcher", "ray::SynchronizationActor",
                                "ray::_AutoscalingCoordinatorActor"],
    "Tune trials": ["ray::ImplicitFunc"],
    "Ray daemons (per Ray start)": ["ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent",
                                    *(f"ray:{d}" for d in RAY_DAEMONS)],
}


def kind(cmdline: str) -> str:
    """A process's kind from its command line: ``stages.train``, ``ray::RayTrainWorker``
    (an actor's task suffix dropped), ``ray:raylet``, ``pytest``, ``dvc``, else its start."""
    if not cmdline.split():
        return "?"
    if found := re.search(r"-m (stages\.\w+)", cmdline):
        return found.group(1)
    if cmdline.startswith("ray::"):
        return cmdline.split()[0].split(".")[0]
    for daemon in RAY_DAEMONS:
        if daemon in cmdline:
            return f"ray:{daemon}"
    if "pytest" in cmdline:
        return "pytest"
    if re.search(r"(^|/)dvc( |$)|-m dvc ", cmdline):
        return "dvc"
    return cmdline[:60]


def snapshot(clock: int) -> dict[tuple[str, int], tuple[float, str]]:
    """(pid, start time) -> (CPU-s so far, command line) for every process now."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the name, which may hold spaces
        cpu = (int(fields[11]) + int(fields[12])) / clock  # utime + stime
        out[(pid, int(fields[19]))] = (cpu, cmdline)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    clock = os.sysconf("SC_CLK_TCK")
    before = snapshot(clock)
    seen: dict[tuple[str, int], tuple[float, str]] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        for key, (cpu, cmdline) in snapshot(clock).items():
            seen[key] = (cpu, cmdline or seen.get(key, (0.0, ""))[1])  # zombies lose it
        time.sleep(args.every)
    wall = time.monotonic() - t0
    cpu_of: dict[str, float] = defaultdict(float)
    count: Counter = Counter()
    for key, (cpu, cmdline) in seen.items():
        used = cpu - before.get(key, (0.0, ""))[0]
        if used > 0.01:
            name = kind(cmdline)
            cpu_of[name] += used
            count[name] += 1
    total = sum(cpu_of.values())
    print(f"{total:.1f} CPU-s over {wall:.0f} s of wall time ({total / wall:.2f} cores busy)")
    for name, cpu in sorted(cpu_of.items(), key=lambda kv: -kv[1])[:40]:
        print(f"{cpu:8.1f} {100 * cpu / total:5.1f}%  x{count[name]:<4} {name}")
    groups = {g: sum(cpu_of.get(k, 0.0) for k in kinds) for g, kinds in GROUPS.items()}
    groups["stage processes"] = sum(v for k, v in cpu_of.items() if k.startswith("stages."))
    print("groups:")
    for name, cpu in groups.items():
        print(f"{cpu:8.1f} {100 * cpu / total:5.1f}%  {name}")
    if args.json:
        args.json.write_text(json.dumps({"wall_s": wall, "cpu_s": total, "groups": groups,
                                         "kinds": {k: [v, count[k]] for k, v in cpu_of.items()}},
                                        indent=1))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
