"""Evaluate one trained size: FID (Inception) or FD-classifier (offline stand-in), GFLOPs.

    python -m stages.evaluate GAT-T1/4 [--seed 0]

Reads the EMA generator in outputs/train/<SIZE>/seed<N>/generator (training seed N), and
decodes with the tokenizer it was trained on. Draws evaluate.num_samples
samples, classes balanced, in batches of evaluate.batch (truncation evaluate.psi), decodes
them with the tokenizer and measures, through torch-fidelity against the `reference`
statistics: the Frechet distance, precision and recall, and (classifier only) how often
the classifier recognises the conditioning class. Adds G's forward GFLOPs (one sample,
multiply-add = 1) and G/D parameter counts. An unconditional generator has no class
accuracy. Writes results/eval/<SIZE>/seed<N>/metrics.json,
outputs/eval/<SIZE>/seed<N>/samples.png (one row per class) and interpolation.png (slerp
in z, lerp in w, class to class), and outputs/pipeline/<SIZE>/seed<N>/ (the diffusers
GATPipeline folder). Logs it all to the MLflow run of the training configuration that made
the generator (metrics as ``eval.*`` and the FD under its own name, FID or FD-classifier,
at the generator's last training step; the pictures under ``eval/``), with the generator
as a pyfunc model: an MLflow LoggedModel of that run (the experiment's Models tab), output
at that step with the metrics of that step linked to it, registered as
``gat-<study_name>-<SIZE>`` (one version per training run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import cluster, evaluation, tracking
from pipeline.config import Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.serving import mlflow_model, walks
from pipeline.serving.diffusers_pipeline import export_pipeline
from pipeline.stage import stage_main


def run(params: Params, args: argparse.Namespace) -> None:
    size, seed = args.size, args.seed
    device = cluster.device(params.runtime.use_gpu)  # refuses a GPU study without one
    generator_dir = LAYOUT.generator(size, seed)
    gen, meta, tokenizer = evaluation.load_trained(generator_dir, device)
    grid, strip = LAYOUT.samples(size, seed), LAYOUT.interpolation(size, seed)
    metrics = {"size": size, "seed": seed, **evaluation.evaluate_trained(
        params, generator_dir, gen, meta, tokenizer, grid)}
    with atomic_path(strip) as tmp:
        walks.save_strip(walks.evaluation_strip(gen, tokenizer, params.evaluate.psi,
                                                params.evaluate.strip_frames), tmp)
    pipeline_dir = export_pipeline(LAYOUT.generator(size, seed), LAYOUT.pipeline(size, seed))
    run_id = evaluation.log_evaluation(params, meta, metrics, [grid, strip])
    metrics["mlflow_run_id"] = run_id
    metrics["mlflow_model"] = register(params, meta, metrics, run_id, pipeline_dir)
    write_json(LAYOUT.eval_metrics(size, seed), metrics)
    print(f"{size} seed {seed}: {evaluation.describe_metrics(metrics)}; model "
          f"{metrics['mlflow_model']}")


def register(params: Params, meta: dict, metrics: dict, run_id: str, pipeline_dir: Path
             ) -> str:
    """The pyfunc model as a LoggedModel of the training run at the generator's last step
    (after :func:`~pipeline.evaluation.log_evaluation`: the metrics it logged there are
    linked to the model), registered as ``gat-<study>-<SIZE>``; its ``models:/`` URI."""
    tr = tracking.tracker(params)
    name = mlflow_model.registered_name(params.tracking.study_name, meta["name"])
    version = mlflow_model.log_model(tr, run_id, pipeline_dir, name, {
        tracking.SIZE: meta["name"], "gat.seed": str(metrics["seed"]),
        tracking.RUN_KEY: meta["run_key"]}, step=int(meta["steps"]))
    return f"models:/{name}/{version}"


if __name__ == "__main__":
    stage_main(__doc__, run, size=True)
