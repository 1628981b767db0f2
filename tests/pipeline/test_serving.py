"""A trained generator put to use: the diffusers pipeline saved and loaded offline gives
`gat sample`'s images, the MLflow model is registered, loaded back and samples, the walk
renderings have their shapes; bad folders and bad requests are refused. The MLflow model is
an MLflow 3 LoggedModel of its training run, with the evaluation metrics linked.

Real parts throughout: the tiny trained generator and AutoencoderKL of the ``parts``
fixture, diffusers' own save_pretrained / from_pretrained (HF_HUB_OFFLINE=1), a sqlite
MLflow store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gat.io import load_generator
from gat.models import build_models
from pipeline.cli import main as gat_main
from pipeline.layout import Layout
from pipeline.pretrained.tokenizer import load_tokenizer
from pipeline.serving import walks
from pipeline.serving.diffusers_pipeline import (
    GATPipeline,
    build_pipeline,
    export_pipeline,
    uint8_pixels,
)
from pipeline.serving.mlflow_model import log_model, predict_images, registered_name
from pipeline.tracking import Tracker
from tests.eval_helpers import CLASSES, check_grid_shape


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory) -> Path:
    """The pipeline folder of the parts' generator, exported as the evaluate stage does
    (its metadata names the `train` tokenizer: the root's data/tokenizer)."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(parts["tokenizer"], root / "data" / "tokenizer")
    return export_pipeline(parts["generator"], root / "pipeline", Layout(root, root))


def test_the_exported_folder_does_not_depend_on_where_the_study_is(folder, parts,
                                                                  tmp_path):
    """Two checkouts export the same bytes (the VAE's config once recorded its absolute
    source folder): what lets two builds of a study compare equal (tests/study_diff.py)."""
    root = tmp_path / "elsewhere"
    shutil.copytree(parts["tokenizer"], root / "data" / "tokenizer")
    other = export_pipeline(parts["generator"], root / "pipeline", Layout(root, root))
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        assert (folder / rel).read_bytes() == (other / rel).read_bytes(), rel
    assert json.loads((other / "vae" / "config.json").read_text())["_name_or_path"] == "train"


def _seeds(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _unconditional(parts) -> GATPipeline:
    torch.manual_seed(0)
    gen, _ = build_models("GAT-T1/4", 4, 16, 0, 8)
    meta = {"name": "GAT-T1/4", "scale_factor": 1.0}
    return build_pipeline(gen.eval(), meta, load_tokenizer(str(parts["tokenizer"])))


def test_pipeline_save_load_gives_gat_sample_images(folder, parts, tmp_path):
    assert sorted(p.name for p in folder.iterdir()) == ["generator", "model_index.json", "vae"]
    pipe = GATPipeline.from_pretrained(folder)
    # gat sample --classes 0,3 --seeds 1,2 is the batch (0, 1), (0, 2), (3, 1), (3, 2)
    images = pipe(class_labels=[0, 0, 3, 3], psi=0.7, guidance=1.5,
                  generator=_seeds(1, 2, 1, 2)).images
    names = [f"class{c:04d}_seed{s:06d}.png" for c in (0, 3) for s in (1, 2)]
    sample = ["sample", "--classes", "0,3", "--seeds", "1,2", "--psi", "0.7", "--guidance",
              "1.5", "--cpu"]
    for out, source in (("cli", ["--generator", str(parts["generator"]), "--decoder",
                                  str(parts["tokenizer"])]),
                        ("from_pipeline", ["--generator", str(folder)])):
        assert gat_main([*sample, *source, "--out", str(tmp_path / out)]) == 0
        for image, name in zip(images, names):
            expected = np.asarray(Image.open(tmp_path / out / name))
            assert np.array_equal(np.asarray(image), expected), (out, name)
    # the same pixels through the other output types
    array = pipe(class_labels=[0, 0, 3, 3], psi=0.7, guidance=1.5, generator=_seeds(1, 2, 1, 2),
                 output_type="np").images
    assert array.dtype == np.float32 and array.shape == (4, 32, 32, 3)
    assert np.array_equal(uint8_pixels(array), np.stack([np.asarray(i) for i in images]))
    (latents,) = pipe(class_labels=1, generator=_seeds(0), output_type="latent",
                      return_dict=False)
    assert latents.shape == (1, 4, 16, 16)
    assert pipe(class_labels=[1], output_type="pt").images.shape == (1, 3, 32, 32)
    # in a batch of another size, a seed's image differs by float rounding at most
    alone = pipe(class_labels=[3], psi=0.7, guidance=1.5, generator=_seeds(2), output_type="np")
    assert np.abs(uint8_pixels(alone.images[0]).astype(int) - np.asarray(images[3])).max() <= 1


def test_pipeline_honours_to_dtype(folder):
    pipe = GATPipeline.from_pretrained(folder)
    full = pipe(class_labels=[0, 2], generator=_seeds(4, 5), output_type="np").images
    half = pipe.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.generator.net.w_avg.dtype == torch.bfloat16
    low = half(class_labels=[0, 2], generator=_seeds(4, 5), output_type="np").images
    assert np.abs(low - full).mean() < 0.02  # bf16 rounding, the same pictures


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipeline_on_cuda_gives_the_cpu_images(folder):
    pipe = GATPipeline.from_pretrained(folder)
    cpu = pipe(class_labels=[0, 2], generator=_seeds(4, 5), output_type="np").images
    gpu = pipe.to("cuda")(class_labels=[0, 2], generator=_seeds(4, 5), output_type="np").images
    assert np.abs(uint8_pixels(gpu).astype(int) - uint8_pixels(cpu)).max() <= 2


def test_bad_folders_are_refused_naming_the_file(folder, tmp_path):
    broken = shutil.copytree(folder, tmp_path / "no_vae")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_vae/vae/diffusion_pytorch_model\.safetensors"):
        GATPipeline.from_pretrained(broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match=r"no_vae/vae/config\.json is missing"):
        GATPipeline.from_pretrained(broken)
    old = shutil.copytree(folder, tmp_path / "old")
    config = json.loads((old / "generator/config.json").read_text())
    (old / "generator/config.json").write_text(json.dumps({**config, "gat_format": 0}))
    with pytest.raises(ValueError, match=r"old/generator/config\.json: GAT pipeline format 0"):
        GATPipeline.from_pretrained(old)


def test_bad_requests_are_refused_with_the_allowed_range(folder, parts):
    pipe = GATPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match=rf"classes \[{CLASSES}\] out of range.*0\.\.3"):
        pipe(class_labels=[0, CLASSES])
    with pytest.raises(ValueError, match=r"psi -0\.5: truncation must be >= 0"):
        pipe(class_labels=[0], psi=-0.5)
    with pytest.raises(ValueError, match=r"one torch\.Generator per image"):
        pipe(class_labels=[0, 1, 2], generator=_seeds(0, 1))
    unconditional = _unconditional(parts)
    assert unconditional(batch_size=3, output_type="np").images.shape == (3, 32, 32, 3)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(class_labels=[0])
    with pytest.raises(ValueError, match="guidance 2: the generator is unconditional"):
        unconditional(guidance=2.0)
    with pytest.raises(ValueError, match="class_id"):
        predict_images(unconditional, pd.DataFrame({"class_id": [0], "seed": [1]}))
    assert predict_images(unconditional, pd.DataFrame({"seed": [1, 2]})).shape == (2, 32, 32, 3)


def test_mlflow_model_logged_model_registered_loaded_back_and_sampled(folder, mlflow_uri,
                                                                     monkeypatch, caplog):
    """The model is a LoggedModel of the training run (the experiment's Models tab) with
    the metrics of its step linked, registered once per run; the version loads and gives
    the pipeline's pixels. The run's status, MLflow's process URIs and sys.path stay."""
    import mlflow

    tr = Tracker(mlflow_uri, "serving-test")
    experiment_id = tr.experiment_id()
    run_id = tr.client.create_run(experiment_id, tags={"gat.size": "GAT-T1/4"}).info.run_id
    tr.log_params(run_id, {"size": "GAT-T1/4", "lr": 0.001})
    tr.log_metrics(run_id, {"loss_d": 0.5}, step=1)  # training, before the model's step
    tr.log_metrics(run_id, {"loss_d": 0.25}, step=2)  # training's last step
    tr.log_metrics(run_id, {"FD-classifier": 12.5, "eval.precision": 0.75}, step=2)
    tr.set_status(run_id, "FINISHED")
    before = tr.client.get_run(run_id).info
    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(),
            os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    path = list(sys.path)
    name = registered_name("tiny-e2e", "GAT-T1/4")
    assert name == "gat-tiny-e2e-GAT-T1_4"

    logger = logging.getLogger("mlflow.models.model")  # MLflow's loggers do not propagate
    logger.addHandler(caplog.handler)
    try:
        version = log_model(tr, run_id, folder, name, {"gat.size": "GAT-T1/4"}, step=2)
    finally:
        logger.removeHandler(caplog.handler)
    assert version == "1"
    # MLflow served the input example to the model as it logged it, without a complaint
    assert "input example" not in caplog.text and "Failed" not in caplog.text
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri(),
            os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")) == uris
    assert mlflow.active_run() is None and sys.path == path
    after = tr.client.get_run(run_id)
    assert (after.info.status, after.info.end_time) == (before.status, before.end_time)
    (model,) = tr.client.search_logged_models([experiment_id])
    assert model.source_run_id == run_id and model.name == name
    assert str(model.status) == "READY" and model.tags["gat.size"] == "GAT-T1/4"
    assert model.params == {"size": "GAT-T1/4", "lr": "0.001"}  # the run's
    assert {m.key: m.value for m in model.metrics} == {
        "FD-classifier": 12.5, "eval.precision": 0.75, "loss_d": 0.25}  # those of step 2
    assert [(o.model_id, o.step) for o in after.outputs.model_outputs] == [(model.model_id, 2)]
    # the run's metric history gained no copies
    assert [m.value for m in tr.client.get_metric_history(run_id, "FD-classifier")] == [12.5]
    (found,) = tr.client.search_model_versions(f"name = '{name}'")
    assert found.run_id == run_id and found.tags["gat.size"] == "GAT-T1/4"
    assert found.source == f"models:/{model.model_id}"

    # evaluated again: the same model and version, the new metrics linked
    tr.log_metrics(run_id, {"FD-classifier": 11.0}, step=2)
    assert log_model(tr, run_id, folder, name, {}, step=2) == "1"
    (again,) = tr.client.search_logged_models([experiment_id])
    assert again.model_id == model.model_id
    assert sorted(m.value for m in again.metrics if m.key == "FD-classifier") == [11.0, 12.5]
    assert len(tr.client.get_run(run_id).outputs.model_outputs) == 1
    assert len(tr.client.search_model_versions(f"name = '{name}'")) == 1

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    assert loaded.metadata.model_id == model.model_id
    inputs = loaded.metadata.get_input_schema().input_names()
    assert inputs == ["class_id", "seed", "psi", "guidance"]
    example = loaded.input_example
    assert example.to_dict("list") == {"class_id": [0, CLASSES - 1], "seed": [0, 1]}
    assert loaded.predict(example).shape == (2, 32, 32, 3)
    frame = pd.DataFrame({"class_id": [0, 3, 3], "seed": [1, 1, 2], "psi": [0.7, 0.7, 1.0]})
    images = loaded.predict(frame)
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    pipe = GATPipeline.from_pretrained(folder)
    truncated = pipe(class_labels=[0, 3], psi=0.7, generator=_seeds(1, 1), output_type="np")
    plain = pipe(class_labels=[3], generator=_seeds(2), output_type="np")
    assert np.array_equal(images[:2], uint8_pixels(truncated.images))
    assert np.array_equal(images[2:], uint8_pixels(plain.images))


def walks_mp4_frames(path) -> list[np.ndarray]:
    """The decoded frames of an MP4, uint8 [H, W, 3] each (imageio-ffmpeg's reader)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_walk_strips_and_animations(parts, tmp_path):
    gen, _ = load_generator(parts["generator"])
    tokenizer = load_tokenizer(str(parts["tokenizer"]))
    strip = walks.evaluation_strip(gen, tokenizer, 1.0, 5)
    assert strip.shape == (3, 5, 3, 32, 32) and strip.dtype == torch.uint8  # z, w, class
    walks.save_strip(strip, tmp_path / "strip.png")
    check_grid_shape(tmp_path / "strip.png", rows=3, cols=5)
    walks.save_animation(strip, tmp_path / "walk.gif")
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == 5 and min(gif.size) >= 128
    walks.save_animation(strip, tmp_path / "walk.mp4", fps=5)
    frames = walks_mp4_frames(tmp_path / "walk.mp4")
    assert len(frames) == 5 and frames[0].shape[0] % 16 == 0 and frames[0].shape[1] >= 128
    # H.264 is lossy: the decoded first frame is close to the GIF's, not equal
    with Image.open(tmp_path / "walk.gif") as gif:
        first = np.asarray(gif.convert("RGB"))
    h, w = first.shape[:2]
    assert np.abs(frames[0][:h, :w].astype(int) - first.astype(int)).mean() < 12
    with pytest.raises(ValueError, match=r"\.mp4, \.gif, \.webp"):
        walks.save_animation(strip, tmp_path / "walk.avi")
    with pytest.raises(ValueError, match=r"seeds \[0\]: a walk needs at least 2"):
        walks.interpolation(gen, "z", [0], [0], 4)
