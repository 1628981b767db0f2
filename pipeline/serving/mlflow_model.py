"""The generator as an MLflow model: a pyfunc around :class:`GATPipeline`, logged as an
MLflow 3 LoggedModel of the training run that made it (the experiment's Models tab, the
evaluation metrics linked to it) and registered per study and size.

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

import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from gat.sample import UNCONDITIONAL
from pipeline import tracking
from pipeline.serving.diffusers_pipeline import GATPipeline, uint8_pixels
from pipeline.tracking import Tracker

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


def _model_files(pipeline_dir: str | Path, tmp: str | Path) -> dict:
    """What :func:`mlflow.pyfunc.save_model` and ``log_model`` take for a pipeline folder:
    the pyfunc, the folder as artifact, signature, a 2-row input example, the code (copied
    under ``tmp``) and pinned requirements."""
    pipe = GATPipeline.from_pretrained(str(pipeline_dir))
    code = [str(shutil.copytree(Path(__import__(p).__file__).parent, Path(tmp) / p,
                                ignore=shutil.ignore_patterns("__pycache__")))
            for p in PACKAGES]
    return {"python_model": GATModel(), "artifacts": {"pipeline": str(pipeline_dir)},
            "signature": signature(pipe), "input_example": input_example(pipe),
            "code_paths": code,
            "pip_requirements": [f"{p}=={metadata.version(p)}" for p in REQUIREMENTS]}


def input_example(pipe: GATPipeline):
    """Two rows (seeds 0 and 1; the first and last class when conditional). MLflow stores
    it with the model and, when logging, loads the model once more and predicts it: two
    images (0.04 s on CPU for the tests' tiny generator; for a large one, a second copy of
    its weights, on the GPU when there is one, and one batch of two)."""
    import pandas as pd

    frame = pd.DataFrame({"seed": [0, 1]})
    if pipe.num_classes:
        frame.insert(0, "class_id", [0, pipe.num_classes - 1])
    return frame


def save_model(pipeline_dir: str | Path, path: str | Path) -> Path:
    """An MLflow pyfunc model folder at ``path`` around a pipeline folder."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pyfunc.save_model(str(path), **_model_files(pipeline_dir, tmp))
    return Path(path)


def logged_model_name(name: str) -> str:
    """A registry name as a LoggedModel name (MLflow refuses / : . % and quotes there)."""
    return re.sub(r"[/:.%\"']", "_", name)


def log_model(tr: Tracker, run_id: str, pipeline_dir: str | Path, name: str,
              tags: dict[str, str], step: int) -> str:
    """The pyfunc model of a pipeline folder as an MLflow LoggedModel (the experiment's
    Models tab) whose source run is ``run_id``, output by that run at ``step``, registered
    as a version of ``name``; returns the version.

    The model is named :func:`logged_model_name` of ``name`` and carries the run's params
    and ``tags``; every metric the run holds at ``step`` (the evaluation's, logged first)
    is linked to it (as MLflow's ``log_model(step=...)`` does in an active run). Once per
    run: a rerun finds the run's model, updates its files and links the new metrics, and
    registers no second version. No run is started or ended (the run's status and end
    time stay); MLflow's process URIs are set to the tracker's only meanwhile.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput, Metric

    client = tr.client
    model_name = logged_model_name(name)
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment_id], f"source_run_id = '{run_id}' AND name = '{model_name}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": True}])
    if found:
        model = found[0]
    else:
        model = client.create_logged_model(
            experiment_id, model_name, run_id, tags=tags, model_type="gat-generator",
            params=client.get_run(run_id).data.params)
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        try:
            client.create_registered_model(name, description="GAT generator: class ids, "
                                           "seeds and psi in, uint8 images out "
                                           "(pipeline.serving)")
        except MlflowException as err:  # registered by an earlier seed, or meanwhile
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    path = list(sys.path)  # loading the model to check the example prepends its code
    try:
        with tempfile.TemporaryDirectory() as tmp, tracking.process_uris_kept():
            # the registry resolves models:/<model_id> through the process's URIs
            mlflow.set_tracking_uri(tr.uri)
            mlflow.set_registry_uri(tr.uri)
            info = mlflow.pyfunc.log_model(
                name=model_name, model_id=model.model_id, tags=tags,
                registered_model_name=None if versions else name,
                **_model_files(pipeline_dir, tmp))
    finally:
        sys.path[:] = path
    linked = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id)
              for key in client.get_run(run_id).data.metrics
              for m in client.get_metric_history(run_id, key) if m.step == step]
    for i in range(0, len(linked), 1000):  # the same points: the run's history keeps one
        client.log_batch(run_id, metrics=linked[i:i + 1000])
    return str(versions[0].version if versions else info.registered_model_version)
