"""Two builds of the same study, compared: what must be bitwise equal is, or it is named.

    python -m tests.study_diff STUDY_A STUDY_B     # exit 1 listing every difference

Equal, byte for byte:
- every DVC-cached output of every stage, by dvc.lock's md5 (data/ and outputs/: the
  stand-ins, the latent shards, teacher tokens, reference statistics, generators, grids,
  exported pipelines);
- every value in results/ (JSON and CSV, floats compared exactly) but the wall-clock ones
  (timings, images/s) and the ids MLflow draws (run ids); the PNG plots byte for byte.

Bitwise identity holds for one machine kind and thread count (the CI compares two builds
with one torch thread each). Another thread count changes the order of float reductions
in matrix products, another CPU or a GPU the kernels: there, compare the metrics with a
tolerance instead (docs/TESTS.md states the figures measured).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd
import yaml

# Values that measure the machine or name a run, not the computation.
VOLATILE = re.compile(r"images_per_s|step_time|seconds|(^|_)time(_s)?$|wall|duration|"
                      r"train_s$|mlflow_run_id|run_id$|sweep_run|started|finished|timestamp")


def cached_outputs(study: Path) -> dict[str, str]:
    """``stage: path`` -> md5 of every DVC-cached output in ``study``'s dvc.lock."""
    lock = yaml.safe_load((study / "dvc.lock").read_text())
    found = {}
    for stage, entry in lock.get("stages", {}).items():
        for out in entry.get("outs", []):
            if not out["path"].startswith("results"):  # results/: compared by value below
                found[f"{stage}: {out['path']}"] = out.get("md5", "?")
    return found


def _json_values(data, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() if not VOLATILE.search(str(key))
                for k, v in _json_values(value, f"{prefix}{key}.").items()}
    if isinstance(data, list):
        return {k: v for i, value in enumerate(data)
                for k, v in _json_values(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): data}


def result_values(path: Path) -> dict[str, object]:
    """The comparable values of one results/ file: JSON leaves, CSV cells, PNG bytes."""
    if path.suffix == ".json":
        return _json_values(json.loads(path.read_text()))
    if path.suffix == ".csv":
        frame = pd.read_csv(path)
        frame = frame[[c for c in frame.columns if not VOLATILE.search(c)]]
        return {f"{r}.{c}": v for r, row in frame.astype(object).iterrows()
                for c, v in row.items()}
    return {"bytes": path.read_bytes()}


def differences(a: Path, b: Path) -> list[str]:
    """Every difference between the builds ``a`` and ``b``, one line each."""
    found: list[str] = []
    out_a, out_b = cached_outputs(a), cached_outputs(b)
    for key in sorted(set(out_a) | set(out_b)):
        if out_a.get(key) != out_b.get(key):
            found.append(f"{key}: md5 {out_a.get(key)} != {out_b.get(key)}")
    files_a = {p.relative_to(a) for p in (a / "results").rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in (b / "results").rglob("*") if p.is_file()}
    for rel in sorted(files_a ^ files_b):
        found.append(f"{rel}: only in {'the first' if rel in files_a else 'the second'}")
    for rel in sorted(files_a & files_b):
        va, vb = result_values(a / rel), result_values(b / rel)
        bad = [k for k in sorted(set(va) | set(vb)) if not _same(va.get(k), vb.get(k))]
        found += [f"{rel}: {k}: {str(va.get(k))[:40]} != {str(vb.get(k))[:40]}"
                  for k in bad[:5]]
        if len(bad) > 5:
            found.append(f"{rel}: ... and {len(bad) - 5} more values")
    return found


def _same(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return True  # NaN in both
    return x == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    found = differences(args.first, args.second)
    outs = len(cached_outputs(args.first))
    if found:
        print(f"the builds differ in {len(found)} places:", *found, sep="\n  ")
        sys.exit(1)
    print(f"the builds are identical: {outs} cached outputs by md5, and results/ by value")


if __name__ == "__main__":
    main()
