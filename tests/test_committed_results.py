"""What is committed is what the committed code computes: `results/` and `dvc.lock` are
not stale, and the README's ladder and its before/after table are the committed results.

`dvc status` on the committed study must list no stage whose code or params changed since
`dvc.lock` was written (outputs absent from a fresh clone are fine: DVC recomputes them,
and the determinism of that recomputation is tested elsewhere). A commit that changes
training code without rerunning the study fails here, naming the stages and files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import FASHION, REPO, dvc_env

README_LADDER = "| images | G params | D params |"


def stale_stages(status: dict) -> dict[str, list[str]]:
    """Stage -> the code files and folders, git-tracked results and params keys that changed
    since dvc.lock (DVC-cached deps, missing in a fresh clone, are not staleness)."""
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout.split())
    tracked |= {str(folder) for f in tracked for folder in Path(f).parents}
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue  # "always changed" and similar notes
            for path, change in entry.get("changed deps", {}).items():
                if path.endswith(".yaml") and isinstance(change, dict):
                    stale.setdefault(stage, []).extend(f"{path}:{k}" for k in change)
                elif path in tracked:
                    # a code file, a code folder (gat, pipeline/serving) or git-tracked
                    # results another stage wrote (results/train): all come with a clone
                    stale.setdefault(stage, []).append(f"{path} ({change})")
    return stale


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
def test_committed_study_is_not_stale():
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json"],
                         cwd=REPO, env=dvc_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    stale = stale_stages(json.loads(out.stdout or "{}"))
    assert not stale, (
        "results/ and dvc.lock are stale: these stages' code or params changed since they "
        f"ran: {json.dumps(stale, indent=1)}\nRerun `bash scripts/repro.sh` and commit "
        "results/ and dvc.lock (and the README's tables) with the change.")


def readme_ladder() -> pd.DataFrame:
    """The README's ladder table (the first one under the results heading), as numbers."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(README_LADDER))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| GAT-"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append({"size": cells[0], "fd": float(cells[4]), "precision": float(cells[5]),
                     "recall": float(cells[6]), "class_accuracy": float(cells[7])})
    return pd.DataFrame(rows).set_index("size")


def test_readme_ladder_is_the_committed_results():
    committed = pd.read_csv(REPO / "results" / "scaling" / "scaling.csv").set_index("size")
    readme = readme_ladder()
    assert list(readme.index) == list(committed.index)
    for size, row in readme.iterrows():
        want = committed.loc[size]
        assert row["fd"] == pytest.approx(round(want["fd"], 2), abs=0.006), size
        for key in ("precision", "recall", "class_accuracy"):
            assert row[key] == pytest.approx(round(want[key], 3), abs=0.0006), (size, key)


@pytest.mark.parametrize("flag", ["--release-study", "--spread"])
def test_readme_tables_are_their_csvs(flag):
    """The README's and docs/RESULTS.md's before/after table (issue 23) and spread table
    (issue 24) are what ``python scripts/readme_tables.py FLAG`` prints from the committed
    csv."""
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_tables

    table = (readme_tables.release_study() if flag == "--release-study"
             else readme_tables.spread()).splitlines()
    for page in ("README.md", "docs/RESULTS.md"):
        lines = (REPO / page).read_text().splitlines()
        start = lines.index(table[0]) if table[0] in lines else -1
        assert start >= 0, f"{page}: no table of `python scripts/readme_tables.py {flag}`"
        assert lines[start:start + len(table)] == table, (
            f"{page}: the table differs from its csv: paste "
            f"`python scripts/readme_tables.py {flag}`")


def test_spread_base_is_the_committed_study():
    """docs/spread_sources.csv's base rows are the committed results, and its training-seed
    rows are the release study's "after" rows (the same code's runs)."""
    spread = pd.read_csv(REPO / "docs" / "spread_sources.csv")
    base = spread[spread["source"] == "base"].set_index("size")
    for size, row in base.iterrows():
        committed = json.loads((REPO / "results" / "eval" / size / "seed0"
                                / "metrics.json").read_text())
        for key, csv_key in (("fd", "fd_classifier"), ("recall", "recall"),
                             ("class_accuracy", "class_accuracy")):
            assert row[csv_key] == pytest.approx(committed[key], abs=1e-6), (size, key)
    release = pd.read_csv(REPO / "docs" / "release_fidelity_study.csv")
    after = release[release["code"] == release["code"].unique()[1]]
    seeds = spread[spread["source"] == "training seed"]
    assert len(seeds) == len(after[after["seed"] > 0])
    for _, row in seeds.iterrows():
        seed = int(row["setting"].split("=")[1].strip("[]"))
        want = after[(after["size"] == row["size"]) & (after["seed"] == seed)]
        assert row["fd_classifier"] == pytest.approx(want["fd_classifier"].item(), abs=1e-6)


def test_stale_check_names_changed_code_and_params():
    deps = {"gat/train.py": "modified", "data/shards/train": "deleted",
            "pipeline/serving": "modified", "params.yaml": {"train.lr_base": "modified"}}
    status = {"train@GAT-T1/4-0": [{"changed deps": deps},
                                    {"changed outs": {"outputs/train/GAT-T1": "not in cache"}}],
              "floors": [{"changed outs": {"results/data/floors.json": "deleted"}}]}
    assert stale_stages(status) == {"train@GAT-T1/4-0": [
        "gat/train.py (modified)", "pipeline/serving (modified)", "params.yaml:train.lr_base"]}
