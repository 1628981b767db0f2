"""tests/study_diff.py finds what differs between two builds of a study, and only that: a
cached output's md5, a result value; not a timing or a run id."""

from __future__ import annotations

import json
import shutil

import yaml

from tests.study_diff import differences


def build(root, shard_md5="aa", fd=12.5, seconds=3.0, run_id="r1"):
    (root / "results" / "eval").mkdir(parents=True)
    lock = {"schema": "2.0", "stages": {
        "encode": {"outs": [{"path": "data/shards/train", "md5": f"{shard_md5}.dir"}]},
        "evaluate@GAT-T1/4-0": {"outs": [
            {"path": "outputs/eval/GAT-T1/4/seed0/samples.png", "md5": "bb"},
            {"path": "results/eval/GAT-T1/4/seed0/metrics.json", "md5": "cc"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    (root / "results" / "eval" / "metrics.json").write_text(json.dumps(
        {"fd": fd, "mlflow_run_id": run_id, "per_size": [{"train_s": seconds, "step": 3}]}))
    (root / "results" / "eval" / "log.csv").write_text(
        f"step,loss_d,images_per_s\n1,0.5,{100 / seconds}\n")
    return root


def test_identical_builds_but_their_timings_and_run_ids(tmp_path):
    a = build(tmp_path / "a")
    b = build(tmp_path / "b", seconds=7.0, run_id="r2")
    assert differences(a, b) == []


def test_a_changed_output_or_value_is_named(tmp_path):
    a = build(tmp_path / "a")
    b = build(tmp_path / "b", shard_md5="ab", fd=12.500001)
    found = differences(a, b)
    assert "encode: data/shards/train: md5 aa.dir != ab.dir" in found
    assert any(line.startswith("results/eval/metrics.json: fd: 12.5 != 12.500001")
               for line in found)
    assert len(found) == 2
    shutil.copy(a / "results" / "eval" / "log.csv", a / "results" / "extra.csv")
    assert "results/extra.csv: only in the first" in differences(a, b)
