"""scripts/spread_study.py: one DVC experiment per setting of each source, every other key
at the base; settings already in the csv are skipped (resume)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from tests.helpers import REPO, dvc_env


def plan(csv) -> list[str]:
    out = subprocess.run([sys.executable, "scripts/spread_study.py", "--dry-run", "--csv",
                          str(csv)], cwd=REPO, env=dvc_env(), capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


def test_each_setting_changes_one_key_and_done_ones_are_skipped(tmp_path):
    csv = tmp_path / "spread.csv"
    lines = plan(csv)
    runs = [line.split("dvc exp run", 1)[1].split() for line in lines]
    base = ["-S", "study.train_seeds=[0]", "-S", "study.seed=0", "-S", "data.shard_size=4096"]
    assert runs[0] == base
    changed = [[a for a in run if a != "-S" and a not in base] for run in runs[1:]]
    assert changed == [["study.train_seeds=[1]"], ["study.train_seeds=[2]"], ["study.seed=1"],
                       ["study.seed=2"], ["data.shard_size=2048"], ["data.shard_size=8192"]]
    for run in runs[1:]:  # the other two keys stay at the base
        assert len([a for a in run if a in base and a != "-S"]) == 2
    pd.DataFrame([{"source": "stand-in seed", "setting": "study.seed=1", "size": "GAT-T1/4"}]
                 ).to_csv(csv, index=False)
    again = plan(csv)
    assert "already" in again[3] and "dvc exp run" not in again[3]
    assert sum("dvc exp run" in line for line in again) == 6
