"""Print the README's results tables from a study's committed results (no hand copying).

    python scripts/readme_tables.py                  # this checkout's results/
    python scripts/readme_tables.py --results DIR    # another study's results folder
    python scripts/readme_tables.py --release-study  # before/after the release's behaviours

Prints the ladder table (the sizes, then the two floors) from results/scaling/scaling.csv
and results/data/floors.json, and, when results/scaling/runs.csv holds several training
seeds, the per-seed table with mean ± sd. FD is FD-classifier (a CPU stand-in, not FID)
for the embedded profile. ``--release-study`` prints the before/after table of issue 23
from docs/release_fidelity_study.csv (one row per size: FD-classifier per training seed, mean
± sd, recall and class accuracy means). tests/test_committed_results.py checks the README
against both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e7 else f"{n / 1e3:.1f}k"


def ladder(results: Path) -> str:
    table = pd.read_csv(results / "scaling" / "scaling.csv")
    metric = table["metric"].iloc[0]
    lines = [f"| images | G params | D params | G GFLOPs | {metric} | precision | recall | "
             "class accuracy of samples | train images/s (whole run) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['size']} | {_count(r['g_params'])} | {_count(r['d_params'])} | "
                     f"{r['g_gflops']:.5f} | {r['fd']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['class_accuracy']:.3f} | "
                     f"{r['train_images_per_s']:.0f} |")
    floors_file = results / "data" / "floors.json"
    if floors_file.exists():
        floors = json.loads(floors_file.read_text())
        for key, label in (("reconstructed", "floor: the same tokenizer's reconstructions of "
                            "2,000 training images"), ("real", "floor: real training images")):
            if f"{key}_fd" in floors:
                lines.append(f"| {label} | | | | {floors[f'{key}_fd']:.2f} | "
                             f"{floors[f'{key}_precision']:.3f} | {floors[f'{key}_recall']:.3f}"
                             f" | {floors[f'{key}_class_accuracy']:.3f} | |")
    return "\n".join(lines)


def seeds(results: Path) -> str | None:
    runs = pd.read_csv(results / "scaling" / "runs.csv")
    if runs["seed"].nunique() < 2:
        return None
    ids = sorted(runs["seed"].unique())
    lines = ["| size | " + " | ".join(f"seed {s}" for s in ids) + " | mean ± sd | "
             "recall (mean ± sd) | class accuracy (mean) |",
             "|---|" + "---|" * len(ids) + "---|---|---|"]
    for size, group in runs.groupby("size", sort=False):
        fd = group.set_index("seed")["fd"]
        lines.append(f"| {size} | " + " | ".join(f"{fd[s]:.2f}" for s in ids)
                     + f" | {fd.mean():.2f} ± {fd.std(ddof=1):.2f} | "
                     f"{group['recall'].mean():.3f} ± {group['recall'].std(ddof=1):.3f} | "
                     f"{group['class_accuracy'].mean():.3f} |")
    return "\n".join(lines)


RELEASE_STUDY = Path(__file__).resolve().parent.parent / "docs" / "release_fidelity_study.csv"


def release_study(csv: Path = RELEASE_STUDY) -> str:
    """The before/after table: the first code in the file is "before", the second "after"."""
    runs = pd.read_csv(csv)
    before, after = runs["code"].unique()

    def cells(group: pd.DataFrame) -> tuple[str, str]:
        fd = group.sort_values("seed")["fd_classifier"]
        spread = f" ± {fd.std(ddof=1):.2f}" if len(fd) > 1 else ""
        return " / ".join(f"{v:.2f}" for v in fd), f"{fd.mean():.2f}{spread}"

    lines = ["| size | before: FD-classifier (seeds 0/1/2) | before: mean ± sd | after: "
             "FD-classifier (seeds 0/1/2) | after: mean ± sd | recall before -> after | "
             "class accuracy before -> after |", "|---|---|---|---|---|---|---|"]
    for size, group in runs.groupby("size", sort=False):
        b, a = group[group["code"] == before], group[group["code"] == after]
        lines.append(f"| {size} | {' | '.join(cells(b))} | {' | '.join(cells(a))} | "
                     f"{b['recall'].mean():.3f} -> {a['recall'].mean():.3f} | "
                     f"{b['class_accuracy'].mean():.3f} -> {a['class_accuracy'].mean():.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).resolve().parent.parent / "results")
    parser.add_argument("--release-study", action="store_true",
                        help=f"print the before/after table of {RELEASE_STUDY.name} only")
    args = parser.parse_args()
    if args.release_study:
        print(release_study())
        return
    print(ladder(args.results))
    per_seed = seeds(args.results)
    if per_seed:
        print()
        print(per_seed)


if __name__ == "__main__":
    main()
