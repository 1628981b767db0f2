"""Training on a real Ray cluster: 2 workers on disjoint data, the divergence guard."""

from __future__ import annotations

import json
import re
import shutil
import time

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from gat.train import NonFiniteError
from pipeline.layout import Layout
from pipeline.training import make_job, run_training
from pipeline.training.driver import KEEP_CHECKPOINTS
from tests.helpers import fd_root, synthetic_root, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic_root(tmp_path_factory.mktemp("root"))


def test_two_workers_disjoint_data_identical_weights_mlflow(ray_cluster, root, tmp_path,
                                                             mlflow_uri):
    params = tiny_params(tmp_path, mlflow_uri, workers=2, batch=16, iterations=16,
                         cpus_per_worker=0.9, log_every=4, checkpoint_every=8,
                         sample_every=8, fd_every=0, loader_workers=0, shuffle_buffer=1)
    record = tmp_path / "record"
    record.mkdir()
    layout = Layout(root, root)
    metrics = run_training(params, "GAT-T1/4", 0, layout, debug={"record_dir": str(record)})
    assert metrics["steps"] == 16
    keys = {r: [line.split()[1] for line in (record / f"keys_rank{r}.txt").read_text().split("\n")
                if line] for r in (0, 1)}
    # 16 steps x 8 samples per worker = one epoch of 256 samples: each seen exactly once
    # (shuffle_buffer=1: a larger buffer would let the next epoch's first samples in early)
    assert len(keys[0]) == len(keys[1]) == 128
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == [f"{j:09d}" for j in range(256)]
    checksums = {(record / f"params_rank{r}.txt").read_text() for r in (0, 1)}
    assert len(checksums) == 1, "G and D differ across workers"
    assert (layout.generator("GAT-T1/4", 0) / "generator.pt").exists()
    run_dir = make_job(params, "GAT-T1/4", 0, layout).run_dir
    assert run_dir == root / "outputs/checkpoints/GAT-T1/4" / metrics["run_key"]
    kept = [d for d in run_dir.glob("checkpoint_*") if d.is_dir()]
    assert 1 <= len(kept) <= KEEP_CHECKPOINTS
    # named by step (not Ray's date and time): the run's outputs in the last step's _final
    assert all(re.fullmatch(r"checkpoint_step\d{8}(_final)?", d.name) for d in kept), kept
    assert "checkpoint_step00000016_final" in {d.name for d in kept}
    log = pd.read_csv(layout.train_results("GAT-T1/4", 0) / "log.csv")
    assert list(log["step"]) == [4, 8, 12, 16]
    client = MlflowClient(mlflow_uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["gat.run_key"] == metrics["run_key"]
    assert run.data.tags["runtime.workers"] == "2"  # a runtime knob: a tag, not a param
    assert "workers" not in run.data.params and "train.batch" in run.data.params
    assert {"loss_d", "loss_g", "logit_gap", "r1", "r2", "repa", "grad_norm_g",
            "images_per_s"} <= set(run.data.metrics)
    # the rows went to MLflow without waiting, and every one arrived (flushed at the end)
    history = client.get_metric_history(run.info.run_id, "loss_d")
    assert sorted(m.step for m in history) == [4, 8, 12, 16]
    assert float(run.data.params["lr"]) == pytest.approx(params.train.lr_base)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert any(p.endswith(".png") for p in artifacts)


def test_divergence_guard_stops_with_the_step(ray_cluster, root, tmp_path, mlflow_uri):
    """NaN in D's output on rank 1 only: rank 0 waits in the all-reduce, yet the run stops."""
    params = tiny_params(tmp_path, mlflow_uri, workers=2, batch=8, iterations=12,
                         cpus_per_worker=0.9, checkpoint_every=4, log_every=4, fd_every=0,
                         loader_workers=0, shuffle_buffer=8, sample_every=0)
    t0 = time.time()
    layout = Layout(tmp_path / "copy", tmp_path / "copy")
    shutil.copytree(root / "data", layout.root / "data")
    with pytest.raises(NonFiniteError, match=r"non-finite D logit .* at step 6") as err:
        run_training(params, "GAT-T1/4", 0, layout, track=False,
                     debug={"nan_at_step": 6, "nan_rank": 1})
    assert time.time() - t0 < 120, "the guard must not wait for the gloo timeout"
    assert "last good checkpoint kept" in str(err.value)
    assert not layout.generator("GAT-T1/4", 0).exists()
    ckpts = make_job(params, "GAT-T1/4", 0, layout).run_dir
    assert json.loads((ckpts / "diverged.json").read_text())["rank"] == 1
    steps = [json.loads(p.read_text())["step"] for p in ckpts.glob("checkpoint_*/step.json")]
    assert max(steps) == 4, "the last good checkpoint is step 4's"



def test_checkpoint_before_the_fd_proxy_which_two_workers_share(ray_cluster, tmp_path,
                                                                 mlflow_uri):
    """The proxy fails at step 4 on rank 1: step 4's checkpoint and row are kept (no
    checkpoint was due there: a proxy's step always gets one first). The same command
    resumes from it; the last step's proxy, each worker on its share, is the value one
    process gets from the published generator."""
    from ray.train import TrainingFailedError

    from gat.io import load_generator
    from pipeline.evaluation import generator_fd
    from pipeline.pretrained.tokenizer import load_tokenizer
    from pipeline.training.checkpoint import latest

    root = fd_root(tmp_path / "root")
    layout = Layout(root, root)
    params = tiny_params(tmp_path, mlflow_uri, workers=2, batch=8, iterations=8,
                         cpus_per_worker=0.9, checkpoint_every=8, log_every=2, fd_every=4,
                         fd_samples=66, sample_every=0, loader_workers=0, shuffle_buffer=8,
                         max_failures=0)
    with pytest.raises(TrainingFailedError):
        run_training(params, "GAT-T1/4", 0, layout,
                     debug={"fd_fail_at_step": 4, "fd_fail_rank": 1})
    run_dir = make_job(params, "GAT-T1/4", 0, layout).run_dir
    assert latest(run_dir)[0] == 4, "step 4's checkpoint, reported before its proxy"
    log = pd.read_csv(run_dir / "log.csv")
    assert list(log["step"]) == [2, 4] and log["loss_d"].notna().all()
    assert log["fd"].isna().all()
    metrics = run_training(params, "GAT-T1/4", 0, layout)
    assert metrics["steps_this_run"] == 4, "resumed from step 4"
    log = pd.read_csv(layout.train_results("GAT-T1/4", 0) / "log.csv")
    assert list(log["step"]) == [2, 4, 6, 8]
    assert list(log["fd"].notna()) == [False, False, False, True]
    fd = float(log["fd"].iloc[-1])
    history = MlflowClient(mlflow_uri).get_metric_history(metrics["mlflow_run_id"], "fd")
    assert [(m.step, m.value) for m in history] == [(8, pytest.approx(fd))]
    took = MlflowClient(mlflow_uri).get_metric_history(metrics["mlflow_run_id"], "fd_proxy_s")
    assert [m.step for m in took] == [8] and took[0].value > 0  # its time, beside it
    assert "fd_proxy_s" not in log.columns  # a timing: not in the results DVC keeps
    gen, meta = load_generator(layout.generator("GAT-T1/4", 0))
    tokenizer = load_tokenizer(meta["tokenizer"], "cpu", meta["scale_factor"], layout)
    assert generator_fd(gen, tokenizer, 66, layout) == pytest.approx(fd, rel=1e-6)


def test_a_one_class_dataset_trains_an_unconditional_model(ray_cluster, tmp_path, mlflow_uri):
    """The tiny profile on one-class shards (a flat image folder encodes to these): G and D
    are built without classes, and the generator samples without them."""
    from gat.io import load_generator
    from gat.sample import parse_classes, sample_latents

    root = synthetic_root(tmp_path / "root", classes=1)
    params = tiny_params(tmp_path, mlflow_uri, batch=8, iterations=4, log_every=2,
                         checkpoint_every=4, sample_every=4, fd_every=0, loader_workers=0)
    layout = Layout(root, root)
    metrics = run_training(params, "GAT-T1/4", 0, layout)
    gen, meta = load_generator(layout.generator("GAT-T1/4", 0))
    assert gen.num_classes == 0 and meta["steps"] == metrics["steps"] == 4
    latents, _ = sample_latents(gen, parse_classes("all", 0), [0, 1, 2])
    assert latents.shape == (3, 4, 8, 8) and torch.isfinite(latents).all()
    with pytest.raises(ValueError, match="unconditional"):
        parse_classes("0", gen.num_classes)
    log = pd.read_csv(layout.train_results("GAT-T1/4", 0) / "log.csv")
    assert list(log["step"]) == [2, 4] and log["loss_d"].notna().all()
