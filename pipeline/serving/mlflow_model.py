"""The generator as an MLflow model: a pyfunc around :class:`GATPipeline`, logged into the
training run that made it and registered per study and size.

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/gat-fashion-mnist-ladder-GAT-T4_4/1")
    images = model.predict(pd.DataFrame({"class_id": [0, 7], "seed": [0, 0], "psi": 0.8}))
    # uint8 [2, H, W, 3]; row i is gat sample's image of (class_id[i], seed[i])

Input columns: ``class_id`` (int; required, and refused for an unconditional generator),
``seed`` (int), ``psi`` and ``guidance`` (float, optional, default 1). Output: uint8
images [N, H, W, 3]. The model folder holds the pipeline folder as an artifact and this
project's ``gat`` and ``pipeline`` packages as code, so it loads wherever its pip
requirements are installed.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from gat.sample import UNCONDITIONAL
from pipeline.serving.diffusers_pipeline import GATPipeline, uint8_pixels
from pipeline.tracking import Tracker

ARTIFACT = "model"  # the model's folder among its training run's artifacts
PACKAGES = ("gat", "pipeline")  # the code the model carries
REQUIREMENTS = ("torch", "diffusers", "mlflow", "numpy", "pandas", "pyyaml", "safetensors",
                "tqdm")
SETTINGS = {"psi": 1.0, "guidance": 1.0}  # optional columns and their defaults


def registered_name(study_name: str, size: str) -> str:
    """The registry name of a study's size: ``gat-<study>-<size>`` (MLflow refuses '/')."""
    return f"gat-{study_name}-{size}".replace("/", "_").replace(":", "_")


def signature(pipe: GATPipeline):
    """Inputs class_id (required iff conditional), seed, psi, guidance; uint8 images out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    side = pipe.generator.config.size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    inputs = Schema([ColSpec("long", "class_id", required=pipe.num_classes > 0),
                     ColSpec("long", "seed"),
                     *(ColSpec("double", name, required=False) for name in SETTINGS)])
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, side, side, 3), "images")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def predict_images(pipe: GATPipeline, frame) -> np.ndarray:
    """uint8 [N, H, W, 3] for the rows of a DataFrame (see the module docstring); rows
    with the same psi and guidance run as one batch."""
    frame = frame.reset_index(drop=True)
    if pipe.num_classes and "class_id" not in frame:
        raise ValueError(f"class_id: required, one per row (0..{pipe.num_classes - 1})")
    if not pipe.num_classes and frame.get("class_id") is not None:
        raise ValueError(f"class_id: {UNCONDITIONAL}; give seeds only")
    settings = frame.reindex(columns=list(SETTINGS)).astype(float).fillna(SETTINGS)
    out = np.zeros((len(frame), 0, 0, 3), dtype=np.uint8)
    for (psi, guidance), rows in settings.groupby(list(SETTINGS)):
        picked = frame.loc[rows.index]
        labels = picked["class_id"].astype(int).tolist() if "class_id" in picked else None
        images = pipe(class_labels=labels, batch_size=None if labels else len(picked),
                      psi=psi, guidance=guidance, output_type="np",
                      generator=[torch.Generator().manual_seed(int(s)) for s in picked["seed"]]
                      ).images
        if out.shape[1:] != images.shape[1:]:
            out = np.zeros((len(frame), *images.shape[1:]), dtype=np.uint8)
        out[rows.index.to_numpy()] = uint8_pixels(images)
    return out


class GATModel(PythonModel):
    """Loads the pipeline folder artifact; predicts images (see :func:`predict_images`)."""

    def load_context(self, context) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = GATPipeline.from_pretrained(context.artifacts["pipeline"]).to(device)
        self.pipe.set_progress_bar_config(disable=True)

    def predict(self, context, model_input, params=None):
        return predict_images(self.pipe, model_input)


def save_model(pipeline_dir: str | Path, path: str | Path) -> Path:
    """An MLflow pyfunc model folder at ``path`` around a pipeline folder."""
    import mlflow.pyfunc

    pipe = GATPipeline.from_pretrained(str(pipeline_dir))
    with tempfile.TemporaryDirectory() as tmp:
        code = [str(shutil.copytree(Path(__import__(p).__file__).parent, Path(tmp) / p,
                                    ignore=shutil.ignore_patterns("__pycache__")))
                for p in PACKAGES]
        mlflow.pyfunc.save_model(
            str(path), python_model=GATModel(), artifacts={"pipeline": str(pipeline_dir)},
            signature=signature(pipe), code_paths=code,
            pip_requirements=[f"{p}=={metadata.version(p)}" for p in REQUIREMENTS])
    return Path(path)


def log_model(tr: Tracker, run_id: str, pipeline_dir: str | Path, name: str,
              tags: dict[str, str]) -> str:
    """Log the pyfunc model of a pipeline folder into run ``run_id`` (artifact ``model``)
    and register it as a version of ``name`` (once per run: a rerun updates the files the
    version points at). Returns the version."""
    with tempfile.TemporaryDirectory() as tmp:
        tr.log_artifacts(run_id, save_model(pipeline_dir, Path(tmp) / ARTIFACT), ARTIFACT)
    client = tr.client
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        return str(found[0].version)
    try:
        client.create_registered_model(name, description="GAT generator: class ids, seeds "
                                       "and psi in, uint8 images out (pipeline.serving)")
    except MlflowException as err:  # registered by an earlier seed, or meanwhile
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT}"
    return str(client.create_model_version(name, source, run_id, tags=tags).version)
