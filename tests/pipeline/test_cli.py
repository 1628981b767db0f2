"""The gat command: info (model facts), sample (files, grids, MLflow references)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main as gat_main
from pipeline.cli import model_info
from tests.eval_helpers import CLASSES, check_grid_shape


def test_gat_info_json_cli():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "info", "GAT-S/2", "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert {"g_params", "d_params", "g_gflops", "lr"} <= set(info)
    assert info["lr"] == pytest.approx(4e-4)
    assert info["g_gflops"] == pytest.approx(6.06, rel=0.02)
    assert info["g_params"] == model_info("GAT-S/2")["g_params"]


def test_gat_info_rejects_unknown_model():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "info", "GAT-Q/2"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "GAT-S/2" in out.stderr


def test_gat_sample_writes_files_and_grid(tmp_path, parts, capsys):
    base = ["sample", "--generator", str(parts["generator"]), "--decoder",
            str(parts["tokenizer"]), "--cpu"]
    assert gat_main([*base, "--classes", "0,3", "--seeds", "1-3", "--out",
                     str(tmp_path / "one")]) == 0
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"class{c:04d}_seed{s:06d}.png" for c in (0, 3) for s in (1, 2, 3)]
    assert gat_main([*base, "--seeds", "0-4", "--psi", "0.7", "--guidance", "1.5",
                     "--out", str(tmp_path / "grid.png")]) == 0
    check_grid_shape(tmp_path / "grid.png", rows=CLASSES, cols=5)  # all classes x 5 seeds
    assert gat_main([*base, "--classes", "7", "--out", str(tmp_path / "x.png")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_gat_sample_from_an_mlflow_run(tmp_path, parts, mlflow_uri):
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("sample-test", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(parts["generator"]), "generator")  # as training logs it
    assert gat_main(["sample", "--generator", f"runs:/{run_id}", "--tracking-uri", mlflow_uri,
                     "--decoder", str(parts["tokenizer"]), "--classes", "1", "--seeds", "0",
                     "--cpu", "--out", str(tmp_path / "from_run")]) == 0
    assert [p.name for p in (tmp_path / "from_run").iterdir()] == ["class0001_seed000000.png"]


def test_gat_info_with_a_different_d():
    info = model_info("GAT-T2/4", 4, 16, 10, 8, d_name="GAT-T3/4")
    same = model_info("GAT-T2/4", 4, 16, 10, 8)
    assert info["g_params"] == same["g_params"] and info["d_params"] > same["d_params"]
    assert info["d_lr"] < info["lr"] and "d_name" not in same


def test_gat_sample_decoder_folder_naming_a_source(tmp_path, parts):
    """data/tokenizer of a hub-id tokenizer holds only source.txt (here: a local folder,
    as a hub id cannot be fetched offline): --decoder data/tokenizer follows it."""
    decoder = tmp_path / "data" / "tokenizer"
    decoder.mkdir(parents=True)
    (decoder / "source.txt").write_text(f"{parts['tokenizer']}\n")
    assert gat_main(["sample", "--generator", str(parts["generator"]), "--decoder",
                     str(decoder), "--classes", "1", "--seeds", "0-2", "--cpu",
                     "--out", str(tmp_path / "grid.png")]) == 0
    check_grid_shape(tmp_path / "grid.png", rows=1, cols=3)


def test_gat_interpolate_writes_strip_and_animation(tmp_path, parts, capsys):
    from PIL import Image

    base = ["interpolate", "--generator", str(parts["generator"]), "--decoder",
            str(parts["tokenizer"]), "--cpu"]
    assert gat_main([*base, "--kind", "z", "--classes", "0,2", "--seeds", "0,1,2", "--frames",
                     "4", "--out", str(tmp_path / "z.png"), "--video", str(tmp_path / "z.gif"),
                     "--video-frames", "6"]) == 0
    check_grid_shape(tmp_path / "z.png", rows=4, cols=4)  # 2 classes x 2 seed pairs
    with Image.open(tmp_path / "z.gif") as gif:
        assert gif.n_frames == 6
    assert gat_main([*base, "--kind", "class", "--classes", "0,3", "--seeds", "5",
                     "--out", str(tmp_path / "c.png")]) == 0
    check_grid_shape(tmp_path / "c.png", rows=1, cols=8)
    for bad, message in ((["--frames", "1"], "frames 1: an interpolation needs at least 2"),
                         (["--classes", "9"], "classes [9] out of range"),
                         (["--psi", "-1"], "psi -1: truncation must be >= 0"),
                         (["--video", "x.avi"], "must end in .mp4, .gif, .webp")):
        assert gat_main([*base, *bad, "--out", str(tmp_path / "x.png")]) == 2
        assert message in capsys.readouterr().err


def test_gat_edit_saves_directions_and_applies_them_to_any_seed(tmp_path, parts):
    import numpy as np
    from PIL import Image

    from gat.walk import load_directions

    base = ["edit", "--generator", str(parts["generator"]), "--decoder",
            str(parts["tokenizer"]), "--cpu", "--components", "0-1", "--steps", "3"]
    assert gat_main([*base, "--pca-samples", "300", "--pca-classes", "1,2",
                     "--out", str(tmp_path / "e.png")]) == 0
    check_grid_shape(tmp_path / "e.png", rows=2, cols=3)  # 2 components x 1 class x 1 seed
    directions, meta = load_directions(tmp_path / "e.directions.pt")
    assert directions.components.shape == (2, 32) and meta["name"] == "GAT-T1/4"
    assert meta["classes"] == [1, 2] and directions.samples == 300
    assert gat_main([*base, "--directions", str(tmp_path / "e.directions.pt"), "--classes",
                     "2", "--seeds", "5,6", "--out", str(tmp_path / "again.png")]) == 0
    check_grid_shape(tmp_path / "again.png", rows=4, cols=3)
    # the middle column (0 sigma) is the unedited sample, as gat sample draws it
    assert gat_main(["sample", "--generator", str(parts["generator"]), "--decoder",
                     str(parts["tokenizer"]), "--classes", "2", "--seeds", "6", "--cpu",
                     "--out", str(tmp_path / "s")]) == 0
    strip = np.asarray(Image.open(tmp_path / "again.png")).astype(int)
    unedited = strip[1 + 33:1 + 33 + 32, 1 + 33:1 + 33 + 32]  # row 1 (seed 6), column 1
    sample = np.asarray(Image.open(tmp_path / "s" / "class0002_seed000006.png"))
    assert np.abs(unedited - sample).max() <= 1  # batch rounding at most


def test_gat_acts_on_the_checkout_it_runs_in(tmp_path):
    """`gat`, installed in a venv by one checkout, run in another checkout writes that
    one's params.yaml (it once wrote its own install's: found by the rehearsal)."""
    from pathlib import Path

    from tests.helpers import REPO, copy_repo, dvc_env

    copy_repo(tmp_path)
    before = (REPO / "params.yaml").read_bytes()
    env = {k: v for k, v in dvc_env().items() if k not in ("GAT_ROOT", "PYTHONPATH")}
    gat = Path(sys.executable).parent / "gat"
    done = subprocess.run([str(gat), "profile", "tiny"], cwd=tmp_path / "docs", env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"to {tmp_path / 'params.yaml'}" in done.stdout
    assert "tiny-e2e" in (tmp_path / "params.yaml").read_text()
    assert (REPO / "params.yaml").read_bytes() == before


def test_paper_profile_links_dvc_cache(tmp_path):
    """`gat profile paper` sets the workspace's DVC cache to links (46-556 GB of shards and
    tokens are never copied into the cache and back); the embedded presets leave DVC as is."""
    from pathlib import Path

    from tests.helpers import copy_repo, dvc_env

    copy_repo(tmp_path)
    assert (tmp_path / ".dvc" / "config").exists()
    gat = Path(sys.executable).parent / "gat"

    def profile(name: str) -> str:
        done = subprocess.run([str(gat), "profile", name, "--no-check-paths"], cwd=tmp_path,
                              env=dvc_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    profile("tiny")
    assert not (tmp_path / ".dvc" / "config.local").exists()
    assert "cache.type reflink,hardlink,symlink" in profile("paper")
    linked = subprocess.run([sys.executable, "-m", "dvc", "config", "cache.type"], cwd=tmp_path,
                            env=dvc_env(), capture_output=True, text=True, check=True)
    assert linked.stdout.strip() == "reflink,hardlink,symlink"
    assert "cache.type" not in (tmp_path / ".dvc" / "config").read_text()  # not committed
