"""Run state on a folder or a URI (pipeline.storage), and where the layout puts it."""

from __future__ import annotations

from pathlib import Path

from pipeline.layout import Layout
from pipeline.storage import StorePath, location, size, write_text


def test_folder_and_uri_answer_alike(tmp_path):
    for root in (tmp_path, location("mock:///state")):
        run = root / "checkpoints" / "GAT-T1/4" / "key-10"
        write_text(run / "log.csv", "step\n1\n")
        write_text(run / "checkpoint_a" / "step.json", "{}")
        assert (run / "log.csv").read_text() == "step\n1\n" and size(run / "log.csv") == 7
        assert [p.name for p in run.glob("checkpoint_*/step.json")] == ["step.json"]
        assert run.parent.name == "4" and not (run / "diverged.json").exists()
        (run / "log.csv").unlink()
        (run / "log.csv").unlink(missing_ok=True)
        assert size(run / "log.csv") is None


def test_location_kinds_and_queries():
    assert location("/nfs/gat") == Path("/nfs/gat")
    assert location("file:///nfs/gat") == Path("/nfs/gat")
    s3 = location("s3://bucket/gat?region=eu-west-1")
    assert isinstance(s3, StorePath)
    child = s3 / "checkpoints" / "GAT-T1/4"
    assert str(child) == "s3://bucket/gat/checkpoints/GAT-T1/4?region=eu-west-1"
    assert child.name == "4" and str(child.parent.parent) == str(s3 / "checkpoints")


def test_layout_state_and_worker_data():
    layout = Layout(Path("/repo"), Path("/workspace"))
    assert layout.checkpoints("GAT-T1/4") == Path("/workspace/outputs/checkpoints/GAT-T1/4")
    assert str(layout.checkpoints("GAT-T1/4", "s3://b/gat")) == "s3://b/gat/checkpoints/GAT-T1/4"
    assert layout.tune_state() == Path("/workspace/outputs/tune")
    assert layout.tune_state("/nfs/gat") == Path("/nfs/gat/tune")
    assert layout.worker_data() == ("/repo/data/shards/train", "/repo/data/teacher")
    assert layout.worker_data("https://host/gat-data/") == (
        "https://host/gat-data/shards/train", "https://host/gat-data/teacher")
    assert layout.worker_data("pipe:aws s3 cp s3://b/data/{path} -") == (
        "pipe:aws s3 cp s3://b/data/shards/train/{path} -",
        "pipe:aws s3 cp s3://b/data/teacher/{path} -")
