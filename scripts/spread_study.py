"""Measure the embedded ladder's spread by its source, one DVC experiment per setting.

    bash scripts/repro.sh                      # the study, built (or a checkout that has it)
    python scripts/spread_study.py --dry-run   # the experiments it would run
    python scripts/spread_study.py             # run them; rows land in docs/spread_sources.csv
    python scripts/readme_tables.py --spread   # the table the README carries

Three sources move the ladder's numbers (issue 24). Each is varied alone, every other key
at params.yaml's value; the base (study.seed 0, data.shard_size 4096, training seed 0) is
the committed study:

- training seed (``study.train_seeds``): G's and D's init, z, the loader's shuffle;
- stand-in seed (``study.seed``): the tokenizer, teacher and classifier are retrained, and
  the evaluation's z and class draws change with them (everything reruns; the classifier
  is the ruler, so this source moves the scale FD-classifier is measured on, too);
- shard batching (``data.shard_size``): the same latents in other shards, hence other
  batches (encode, the teacher features and the trainings rerun; issue 16's change).

The training seeds' rows now in the csv are docs/ladder_3seeds' seeds 1 and 2 (``dvc exp
run -S 'study.train_seeds=[0,1,2]'`` on the committed study), copied; the earlier machine's
build's rows are in docs/spread_sources_earlier_build.csv (``--csv`` writes elsewhere).
A setting already in the csv is not run again (to resume, run the same command again).
Each experiment is ``dvc exp run -S ...`` on this checkout: it stays in ``dvc exp show``.
At the end the workspace is put back to the base (``git checkout``, ``dvc checkout``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from pipeline.files import atomic_path

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "docs" / "spread_sources.csv"
COLUMNS = ["source", "setting", "size", "fd_classifier", "precision", "recall",
           "class_accuracy"]

# (source, the one key it sets, the values beside the base's)
SOURCES = [("training seed", "study.train_seeds", ["[1]", "[2]"]),
           ("stand-in seed", "study.seed", ["1", "2"]),
           ("shard batching", "data.shard_size", ["2048", "8192"])]


def base_settings(params: dict) -> dict[str, str]:
    """The base's value of every key a source varies, as ``-S`` writes it."""
    seeds = params["study"]["train_seeds"]
    if seeds != [0]:
        raise SystemExit(f"params.yaml: study.train_seeds is {seeds}; the base is [0]")
    return {"study.train_seeds": "[0]", "study.seed": str(params["study"]["seed"]),
            "data.shard_size": str(params["data"]["shard_size"])}


def read_rows(root: Path, source: str, setting: str, train_seed: int) -> list[dict]:
    """One row per size from the workspace's results/ (the experiment just run)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    rows = []
    for size in params["study"]["sizes"]:
        m = json.loads((root / "results" / "eval" / size / f"seed{train_seed}"
                        / "metrics.json").read_text())
        rows.append({"source": source, "setting": setting, "size": size,
                     "fd_classifier": m["fd"], "precision": m["precision"],
                     "recall": m["recall"], "class_accuracy": m["class_accuracy"]})
    return rows


def append(csv: Path, rows: list[dict]) -> None:
    """Add rows to the csv through a temp name (a kill never leaves half a file)."""
    old = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=COLUMNS)
    table = pd.concat([old, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=CSV, help="where the rows go")
    parser.add_argument("--dry-run", action="store_true", help="print the experiments only")
    args = parser.parse_args()
    if not (ROOT / "results" / "scaling" / "metrics.json").exists():
        raise SystemExit("results/scaling/metrics.json is missing: build the study first "
                         "(bash scripts/repro.sh)")
    base = base_settings(yaml.safe_load((ROOT / "params.yaml").read_text()))
    done = set()
    if args.csv.exists():
        done = set(zip(*pd.read_csv(args.csv)[["source", "setting"]].T.values))
    plan = [("base", "base", {})] + [(source, f"{key}={value}", {key: value})
                                     for source, key, values in SOURCES for value in values]
    for source, setting, change in plan:
        if (source, setting) in done:
            print(f"{source:15} {setting:25} in {args.csv.name} already")
            continue
        sets = {**base, **change}
        cmd = ["dvc", "exp", "run"] + [a for k, v in sets.items() for a in ("-S", f"{k}={v}")]
        print(f"{source:15} {setting:25} {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        subprocess.run(cmd, cwd=ROOT, check=True)
        train_seed = int(sets["study.train_seeds"].strip("[]"))
        append(args.csv, read_rows(ROOT, source, setting, train_seed))
    if not args.dry_run:
        subprocess.run(["git", "checkout", "--", "params.yaml", "dvc.lock", "results"],
                       cwd=ROOT, check=True)
        subprocess.run(["dvc", "checkout", "-q"], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
