"""How many seeds each claim needs for a verdict, projected from a claims suite's runs.

    python benchmarks/claims_power.py docs/claims_paired --minutes-per-seed 14.5
    python benchmarks/claims_power.py results/claims

Reads every claim's runs (``NAME-runs.csv`` in a folder, or ``NAME/runs.csv`` as the claim
stages write them), pairs each comparison's variants by seed as ``pipeline.claims`` does,
and prints per comparison the per-seed differences FD(worse) - FD(better), their mean and
sd, today's 95% half width, and ``seeds_needed``: the fewest seeds whose paired interval
would exclude 0 if the mean and sd stayed as measured. Per claim: the seeds at which it
would hold (every comparison holds) or be contradicted (one reversed), and the suite's
wall time at that many seeds. A projection for planning, not a result: a sd measured on
three seeds is itself uncertain by about a factor of two.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.claims import claims, compare_paired
from pipeline.config import load_params


def runs_of(folder: Path, name: str) -> pd.DataFrame | None:
    for path in (folder / f"{name}-runs.csv", folder / name / "runs.csv"):
        if path.exists():
            return pd.read_csv(path)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of the claims' runs.csv files")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the params whose claims.* made the runs (their comparisons)")
    parser.add_argument("--minutes-per-seed", type=float, default=0.0,
                        help="the suite's wall time per seed, to print each claim's cost")
    args = parser.parse_args()
    found = {}
    print(f"{'claim':<12} {'comparison (left better)':<30} {'per-seed differences':<24} "
          f"{'mean':>6} {'sd':>5} {'half':>5} {'seeds':>5}")
    for name, claim in claims(load_params(args.params)).items():
        runs = runs_of(args.folder, name)
        if runs is None:
            print(f"{name:<12} (no runs in {args.folder})")
            continue
        fd = {v: dict(zip(g["seed"], g["fd"])) for v, g in runs.groupby("variant")}
        needs = []
        for better, worse in claim.comparisons:
            paired = compare_paired(fd[better], fd[worse])  # the claim stage's statistics
            if paired["detectable"] is None:  # one seed, or a diverged run: no interval
                print(f"{name:<12} {better + ' < ' + worse:<30} {paired['verdict']}")
                needs.append((0.0, None))
                continue
            diffs = [fd[worse][s] - fd[better][s] for s in sorted(set(fd[better]) & set(fd[worse]))]
            mean, n = paired["difference"], paired["seeds_needed"]
            needs.append((mean, n))
            shown = " / ".join(f"{d:+.1f}" for d in diffs)
            print(f"{name:<12} {better + ' < ' + worse:<30} {shown:<24} {mean:>6.1f} "
                  f"{float(np.std(diffs, ddof=1)):>5.1f} {paired['detectable']:>5.1f} "
                  f"{n if n else '>100':>5}")
        holds = (max(n for _, n in needs) if all(m > 0 and n for m, n in needs) else None)
        contradicted = min((n for m, n in needs if m < 0 and n), default=None)
        found[name] = (holds, contradicted)
    print()
    for name, (holds, contradicted) in found.items():
        decided = min((n for n in (holds, contradicted) if n), default=None)
        if decided is None:
            print(f"{name:<12} undecided at any seed count up to 100, at this spread")
            continue
        how = "holds" if decided == holds else "contradicted"
        cost = (f": a suite of {decided} seeds takes {decided * args.minutes_per_seed:.0f} min"
                if args.minutes_per_seed else "")
        print(f"{name:<12} {how} at {decided} seeds{cost}")


if __name__ == "__main__":
    main()
