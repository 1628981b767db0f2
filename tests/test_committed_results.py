"""What is committed is what the committed code computes: `results/` and `dvc.lock` are
not stale, the README's ladder is their three-seed run, and its other tables are their csvs.

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


LADDER_SEEDS = REPO / "docs" / "ladder_3seeds"  # the ladder's three-seed run, results/ only


def _readme_tables():
    """scripts/readme_tables.py, imported."""
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_tables

    return readme_tables


def _assert_page_shows(page: str, table: str, command: str) -> None:
    """``page`` (from the repo root) holds ``table`` line for line, as ``command`` prints it."""
    rows = table.splitlines()
    lines = (REPO / page).read_text().splitlines()
    assert rows[0] in lines, f"{page}: no table of `{command}`"
    start = lines.index(rows[0])
    assert lines[start:start + len(rows)] == rows, (
        f"{page}: the table differs from what `{command}` prints: paste its output")


def test_readme_ladder_is_the_three_seed_run():
    """The README's ladder is ``python scripts/readme_tables.py --results
    docs/ladder_3seeds`` (the sizes, then the floors)."""
    table = _readme_tables().ladder(LADDER_SEEDS)
    assert table.startswith(README_LADDER)
    _assert_page_shows("README.md", table,
                       "python scripts/readme_tables.py --results docs/ladder_3seeds")


def test_metric_spread_needs_seeds_and_lists_every_size():
    """The table after the ladder: one row per size of the three-seed run, none for the
    committed one-seed study (nothing to spread)."""
    readme_tables = _readme_tables()
    assert readme_tables.metric_spread(REPO / "results") is None
    rows = readme_tables.metric_spread(LADDER_SEEDS).splitlines()[2:]
    sizes = pd.read_csv(LADDER_SEEDS / "scaling" / "runs.csv")["size"].unique()
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == list(sizes)
    assert all(r.split(" | ")[1] == "3" and r.count(" ± ") == 3 for r in rows)


def test_three_seed_run_extends_the_committed_study():
    """docs/ladder_3seeds is the committed study with study.train_seeds [0, 1, 2]: its seed
    0 rows are the committed results, value for value but the training speed (a timing,
    which differs per run), and so are its data stages' and floors' results; the others
    are seeds 1 and 2 of every size."""
    apart = ["study_key", "train_images_per_s"]
    committed = pd.read_csv(REPO / "results" / "scaling" / "runs.csv")
    runs = pd.read_csv(LADDER_SEEDS / "scaling" / "runs.csv")
    assert sorted(runs["seed"].unique()) == [0, 1, 2]
    assert (runs.groupby("size")["seed"].nunique() == 3).all()
    seed0 = runs[runs["seed"] == 0].drop(columns=apart).reset_index(drop=True)
    pd.testing.assert_frame_equal(seed0, committed.drop(columns=apart))
    for name in ("tokenizer", "teacher", "classifier", "floors"):
        here = json.loads((REPO / "results" / "data" / f"{name}.json").read_text())
        there = json.loads((LADDER_SEEDS / "data" / f"{name}.json").read_text())
        keys = [k for k in here if not k.endswith("seconds")]  # timings differ per run
        assert {k: here[k] for k in keys} == {k: there[k] for k in keys}, name


@pytest.mark.parametrize("flag", ["--release-study", "--spread"])
def test_readme_tables_are_their_csvs(flag):
    """The README's and docs/RESULTS.md's before/after table (issue 23) and spread table
    (issue 24) are what ``python scripts/readme_tables.py FLAG`` prints from the committed
    csv."""
    readme_tables = _readme_tables()
    table = readme_tables.release_study() if flag == "--release-study" else readme_tables.spread()
    for page in ("README.md", "docs/RESULTS.md"):
        _assert_page_shows(page, table, f"python scripts/readme_tables.py {flag}")


SPREAD_EARLIER = REPO / "docs" / "spread_sources_earlier_build.csv"


def test_earlier_spread_table_is_its_csv():
    """docs/RESULTS.md keeps the earlier machine's spread table (issue 24's first run), as
    ``readme_tables.py --spread --spread-csv docs/spread_sources_earlier_build.csv`` prints."""
    _assert_page_shows("docs/RESULTS.md", _readme_tables().spread(SPREAD_EARLIER),
                       "python scripts/readme_tables.py --spread --spread-csv "
                       "docs/spread_sources_earlier_build.csv")


def test_spread_base_is_the_committed_study():
    """docs/spread_sources.csv is this build's: its base rows are the committed results/ and
    its training-seed rows are seeds 1 and 2 of docs/ladder_3seeds."""
    spread = pd.read_csv(REPO / "docs" / "spread_sources.csv")
    base = spread[spread["source"] == "base"].set_index("size")
    keys = {"fd_classifier": "fd", "precision": "precision", "recall": "recall",
            "class_accuracy": "class_accuracy"}
    for size, row in base.iterrows():
        metrics = json.loads((REPO / "results" / "eval" / size / "seed0" / "metrics.json")
                             .read_text())
        for here, there in keys.items():
            assert row[here] == pytest.approx(metrics[there], abs=1e-6), (size, here)
    runs = pd.read_csv(LADDER_SEEDS / "scaling" / "runs.csv")
    seeds = spread[spread["source"] == "training seed"]
    assert len(seeds) == len(runs[runs["seed"] > 0])
    for _, row in seeds.iterrows():
        seed = int(row["setting"].split("=")[1].strip("[]"))
        want = runs[(runs["size"] == row["size"]) & (runs["seed"] == seed)]
        for here, there in keys.items():
            assert row[here] == pytest.approx(want[there].item(), abs=1e-6), (row["size"], here)


def test_earlier_spread_base_is_the_release_study():
    """docs/spread_sources_earlier_build.csv and docs/release_fidelity_study.csv are one
    study, made on the earlier machine (the committed study before 2026-12-07's rerun): the
    spread's base rows are the release study's "after" seed 0 and its training-seed rows the
    other seeds."""
    spread = pd.read_csv(SPREAD_EARLIER)
    release = pd.read_csv(REPO / "docs" / "release_fidelity_study.csv")
    after = release[release["code"] == release["code"].unique()[1]]
    base = spread[spread["source"] == "base"].set_index("size")
    for size, row in base.iterrows():
        want = after[(after["size"] == size) & (after["seed"] == 0)]
        for key in ("fd_classifier", "recall", "class_accuracy"):
            assert row[key] == pytest.approx(want[key].item(), abs=1e-6), (size, key)
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
