"""Print the README's results tables from a study's committed results (no hand copying).

    python scripts/readme_tables.py                  # this checkout's results/
    python scripts/readme_tables.py --results DIR    # another study's results folder
    python scripts/readme_tables.py --release-study  # before/after the release's behaviours
    python scripts/readme_tables.py --spread         # the ladder's spread by source
    python scripts/readme_tables.py --spread --spread-csv docs/spread_sources_earlier_build.csv

Prints the ladder table (the sizes, then the two floors) from results/scaling/scaling.csv
and results/data/floors.json, and, when results/scaling/runs.csv holds several training
seeds, precision, recall and class accuracy as mean ± sd over them. FD is FD-classifier
(a CPU stand-in, not FID) for the embedded profile. ``--release-study`` prints the
before/after table of issue 23 from docs/release_fidelity_study.csv (one row per size:
FD-classifier per training seed, mean ± sd, recall and class accuracy means). ``--spread``
prints issue 24's table from docs/spread_sources.csv (scripts/spread_study.py;
``--spread-csv``: another such csv, such as the earlier machine's build's): per size, the
FD-classifier of each source's settings and their sd, then whether FD falls with size
under every setting and the fitted exponent under each and under all together.
tests/test_committed_results.py checks the README against all three.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e7 else f"{n / 1e3:.1f}k"


def ladder(results: Path) -> str:
    """The sizes, then the two floors. With several training seeds every measurement is
    the seeds' mean, and the FD's column also gives their sd and each seed's value."""
    table = pd.read_csv(results / "scaling" / "scaling.csv")
    metric = table["metric"].iloc[0]
    several = table["seeds"].max() > 1
    runs = pd.read_csv(results / "scaling" / "runs.csv") if several else None
    seed_ids = " / ".join(f"seed {s}" for s in sorted(runs["seed"].unique())) if several else ""
    fd_head = f"{metric}, mean ± sd ({seed_ids})" if several else metric
    mean = "mean " if several else ""
    lines = [f"| images | G params | D params | G GFLOPs | {fd_head} | {mean}precision | "
             f"{mean}recall | {mean}class accuracy of samples | train images/s (whole run) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        fd = f"{r['fd']:.2f}"
        if several:
            each = runs[runs["size"] == r["size"]].sort_values("seed")["fd"]
            fd += f" ± {r['fd_std']:.2f} ({' / '.join(f'{v:.2f}' for v in each)})"
        lines.append(f"| {r['size']} | {_count(r['g_params'])} | {_count(r['d_params'])} | "
                     f"{r['g_gflops']:.5f} | {fd} | {r['precision']:.3f} | "
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


def metric_spread(results: Path) -> str | None:
    """With several training seeds: each size's precision, recall and class accuracy as
    mean ± sd over the seeds (the ladder carries FD's per seed, the others' means only)."""
    runs = pd.read_csv(results / "scaling" / "runs.csv")
    if runs["seed"].nunique() < 2:
        return None
    columns = {"precision": "precision", "recall": "recall", "class_accuracy": "class accuracy"}
    lines = ["| size | seeds | " + " | ".join(f"{c}, mean ± sd" for c in columns.values())
             + " |", "|---|---|" + "---|" * len(columns)]
    for size, group in runs.groupby("size", sort=False):
        cells = [f"{group[c].mean():.3f} ± {group[c].std(ddof=1):.3f}" for c in columns]
        lines.append(f"| {size} | {group['seed'].nunique()} | " + " | ".join(cells) + " |")
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


SPREAD = RELEASE_STUDY.parent / "spread_sources.csv"


def spread(csv: Path = SPREAD, results: Path = RELEASE_STUDY.parent.parent / "results") -> str:
    """The spread table of issue 24, then one line per ladder claim against the spread.

    Rows: sizes; per source, the base's FD-classifier and its two other settings' (the
    base, setting 0, belongs to every source) and the sd of the three; then the sd of all
    settings together. Below: settings under which FD does not fall with every step in
    size, the exponent b of FD = a * GFLOPs^b fitted per setting (range), and b fitted to
    every setting's points at once with its 95% bootstrap interval.
    """
    sys.path.insert(0, str(results.parent))
    from pipeline.claims import t95
    from pipeline.scaling import fit_log_log, fit_power_law

    runs = pd.read_csv(csv)
    gflops = pd.read_csv(results / "scaling" / "scaling.csv").set_index("size")["g_gflops"]
    sizes = list(dict.fromkeys(runs["size"]))
    base = runs[runs["source"] == "base"].set_index("size")["fd_classifier"]
    sources = [s for s in dict.fromkeys(runs["source"]) if s != "base"]
    head = "| size | base | " + " | ".join(
        f"{src}: {' / '.join(_short(x) for x in dict.fromkeys(runs[runs.source == src].setting))}"
        f" | sd" for src in sources) + " | all settings: sd (range) |"
    lines = [head, "|---|---|" + "---|---|" * len(sources) + "---|"]
    for size in sizes:
        row = [f"{base[size]:.2f}"]
        for src in sources:
            fd = runs[(runs.source == src) & (runs["size"] == size)]["fd_classifier"]
            row += [" / ".join(f"{v:.2f}" for v in fd),
                    f"{pd.concat([fd, pd.Series([base[size]])]).std(ddof=1):.2f}"]
        every = runs[runs["size"] == size]["fd_classifier"]
        row.append(f"{every.std(ddof=1):.2f} ({every.min():.2f}-{every.max():.2f})")
        lines.append(f"| {size} | " + " | ".join(row) + " |")
    x = gflops[sizes].to_numpy()
    fits, not_monotone = [], []
    for (_source, setting), group in runs.groupby(["source", "setting"], sort=False):
        fd = group.set_index("size")["fd_classifier"][sizes].to_numpy()
        fits.append(fit_log_log(x, fd)[1])
        if (fd[1:] >= fd[:-1]).any():
            not_monotone.append(f"{setting}")
    reps = [runs[runs["size"] == s]["fd_classifier"].to_numpy() for s in sizes]
    law = fit_power_law(x, [r.mean() for r in reps], draws=1000, replicas=reps)
    lines += ["", f"Settings under which FD does not fall with every step in size: "
              f"{', '.join(not_monotone) or 'none'} (of {len(fits)}). Exponent b per setting: "
              f"{min(fits):.3f} to {max(fits):.3f}; fitted to all {len(fits)} settings' "
              f"points: {law.b:.3f} (95% bootstrap interval {law.b_ci[0]:.3f} to "
              f"{law.b_ci[1]:.3f})."]
    # Each setting is a whole ladder: the step from one size to the next, paired by setting.
    ladders = runs.pivot_table(index=["source", "setting"], columns="size",
                               values="fd_classifier")[sizes]
    steps = []
    for small, large in itertools.pairwise(sizes):
        gap = (ladders[small] - ladders[large]).to_numpy()
        half = t95(len(gap) - 1) * gap.std(ddof=1) / np.sqrt(len(gap))
        word = "holds" if gap.mean() - half > 0 else "inconclusive"
        steps.append(f"{small} -> {large}: {gap.mean():.2f} [{gap.mean() - half:.2f}, "
                     f"{gap.mean() + half:.2f}] ({word})")
    lines.append(f"FD's fall per step in size, paired by setting (mean and 95% t-interval over "
                 f"the {len(ladders)} settings): " + "; ".join(steps) + ".")
    return "\n".join(lines)


def _short(setting: str) -> str:
    """study.train_seeds=[1] -> 1; data.shard_size=2048 -> 2048: the table's column head."""
    return setting.split("=", 1)[1].strip("[]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).resolve().parent.parent / "results")
    parser.add_argument("--release-study", action="store_true",
                        help=f"print the before/after table of {RELEASE_STUDY.name} only")
    parser.add_argument("--spread", action="store_true",
                        help="print the spread-by-source table of --spread-csv only")
    parser.add_argument("--spread-csv", type=Path, default=SPREAD,
                        help=f"the spread's rows (default: docs/{SPREAD.name})")
    args = parser.parse_args()
    if args.spread:
        print(spread(args.spread_csv))
        return
    if args.release_study:
        print(release_study())
        return
    print(ladder(args.results))
    spread_of_others = metric_spread(args.results)
    if spread_of_others:
        print()
        print(spread_of_others)


if __name__ == "__main__":
    main()
