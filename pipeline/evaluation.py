"""A trained generator measured: balanced samples decoded to images, their features, the
FD / FID with precision, recall and class accuracy, the class-row grid, G's size and cost.

What :mod:`pipeline.fidelity` does for any images, this module does for a generator: the
``evaluate`` stage and the training-time FD proxy both call it. On a GPU study
(``runtime.use_gpu``) the features of ``evaluate`` and ``reference`` are extracted on
every GPU of the Ray cluster (:func:`sampled_features_on_ray`, and stages/reference.py),
one contiguous share per GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gat import flops
from gat.sample import balanced_batches, balanced_labels, sample_latents, shard
from pipeline.config import Params
from pipeline.fidelity import (
    SOURCES,
    Evaluator,
    check_dims,
    check_reference,
    class_accuracy,
    concat,
    evaluator,
    extract,
    frechet_distance,
    inception_score,
    load_reference,
    moments,
    moments_statistics,
    precision_recall,
    reference_path,
    score_name,
    statistics_distance,
)
from pipeline.files import atomic_path
from pipeline.images import save_grid
from pipeline.layout import LAYOUT, Layout
from pipeline.ray_pool import map_parts

GRID_CLASSES = 16  # rows at most: ImageNet's 1000 classes are shown 16, evenly spaced
GRID_UNCONDITIONAL = 4  # rows of an unconditional generator's grid (seeds continue)


def grid_classes(num_classes: int, rows: int = GRID_CLASSES) -> list[int]:
    """All classes when they fit, else ``rows`` of them spread over the range."""
    if num_classes <= rows:
        return list(range(num_classes))
    return [round(i * (num_classes - 1) / (rows - 1)) for i in range(rows)]


def class_grid(gen, tokenizer, psi: float, columns: int) -> torch.Tensor:
    """uint8 [rows * columns, 3, H, W]: row r is one class, column s is seed s (an
    unconditional generator: GRID_UNCONDITIONAL rows of consecutive seeds)."""
    if gen.num_classes == 0:
        classes, seeds = [0], list(range(columns * GRID_UNCONDITIONAL))
    else:
        classes, seeds = grid_classes(gen.num_classes), list(range(columns))
    latents, _ = sample_latents(gen, classes, seeds, psi=psi)
    return tokenizer.decode(latents)


def model_facts(gen, meta: dict) -> dict[str, float | int]:
    """G's forward GFLOPs (one sample) and the G and D parameter counts of a trained G."""
    return flops.model_facts(meta["name"], gen.channels, gen.size, gen.num_classes,
                             meta.get("teacher_dim", 768), meta.get("d_name") or None)


def sample_images(gen, tokenizer, num: int, batch: int = 250, psi: float = 1.0,
                  seed: int = 0, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """uint8 image batches [B, 3, H, W] of ``num`` samples, classes balanced (labels:
    :func:`gat.sample.balanced_labels`), decoded by ``tokenizer`` (pipeline Tokenizer);
    with ``world`` > 1 only worker ``rank``'s share (:func:`gat.sample.shard`)."""
    for latents, _ in balanced_batches(gen, num, batch, psi=psi, seed=seed, rank=rank,
                                       world=world):
        yield tokenizer.decode(latents)


def generated_features(ev: Evaluator, gen, tokenizer, num: int, batch: int = 250,
                       psi: float = 1.0, seed: int = 0, desc: str = "samples",
                       rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """:func:`extract` over ``num`` balanced samples of ``gen`` (in eval mode meanwhile),
    or over worker ``rank``'s share of them (``world`` workers)."""
    was_training = gen.training
    gen.eval()
    try:
        images = sample_images(gen, tokenizer, num, batch, psi, seed, rank, world)
        return extract(ev, images, len(shard(num, rank, world)), desc)
    finally:
        gen.train(was_training)


def score(ev: Evaluator, out: dict[str, torch.Tensor], labels: torch.Tensor | None,
          reference: dict[str, np.ndarray], seed: int = 0, prc: str = "balanced"
          ) -> dict[str, float | int | str]:
    """FD/FID, precision and recall (protocol ``prc``: :func:`precision_recall`), the
    Inception Score (or the classifier's stand-in of it) and (classifier only) class
    accuracy of extracted features ``out`` (from :func:`extract`) whose images were meant
    to show ``labels`` [N]; ``None`` for an unconditional generator (no classes)."""
    precision, recall = precision_recall(out["features"], reference, seed, prc, ev.device)
    metrics: dict[str, float | int | str] = {
        "metric": ev.metric, "fd": frechet_distance(out["features"], reference),
        "precision": precision, "recall": recall, "prc": prc,
        "num_samples": len(out["features"])}
    if "logits" in out:
        metrics["is"] = inception_score(out["logits"])
        metrics["is_metric"] = score_name(SOURCES[ev.name])
        if ev.class_logits and labels is not None:
            metrics["class_accuracy"] = class_accuracy(out["logits"], labels)
    return metrics


def evaluate_generator(ev: Evaluator, gen, tokenizer, reference: dict[str, np.ndarray],
                       num: int, batch: int = 250, psi: float = 1.0, seed: int = 0,
                       prc: str = "balanced") -> dict[str, float | int | str]:
    """:func:`score` of ``num`` class-balanced samples of ``gen``, decoded by ``tokenizer``."""
    out = generated_features(ev, gen, tokenizer, num, batch, psi, seed)
    return score_samples(ev, out, gen.num_classes, reference, psi, seed, prc)


def score_samples(ev: Evaluator, out: dict[str, torch.Tensor], num_classes: int,
                  reference: dict[str, np.ndarray], psi: float = 1.0, seed: int = 0,
                  prc: str = "balanced") -> dict[str, float | int | str]:
    """:func:`score` of the features ``out`` of a generator's balanced samples, in
    :func:`gat.sample.balanced_labels` order (``num_classes`` 0: unconditional)."""
    labels = balanced_labels(len(out["features"]), num_classes) if num_classes else None
    return {**score(ev, out, labels, reference, seed, prc), "psi": psi}


@dataclass(frozen=True)
class SampleFeatureWork:
    """A Ray actor's share of ``evaluate``: G (its folder), the tokenizer it was trained
    with and the extractor, loaded once on the actor's device; task ``part`` of ``parts``
    -> the features of that share of the ``num`` balanced samples
    (:func:`generated_features`: the same samples for any ``parts``)."""

    generator_dir: Path
    layout: Layout
    source: str  # evaluator.source
    num: int
    batch: int
    psi: float
    seed: int
    parts: int = 1

    def __call__(self, device: str) -> Callable[[int], dict[str, torch.Tensor]]:
        gen, _, tokenizer = load_trained(self.generator_dir, device, self.layout)
        ev = evaluator(self.source, _classifier(self.source, self.layout), device)
        return lambda part: generated_features(
            ev, gen, tokenizer, self.num, self.batch, self.psi, self.seed,
            f"samples {part + 1}/{self.parts}", part, self.parts)


def sampled_features_on_ray(work: SampleFeatureWork, use_gpu: bool, cpus: float
                            ) -> dict[str, torch.Tensor]:
    """What ``work`` extracts, one contiguous share of the samples per Ray actor, one actor
    per GPU (``use_gpu``; refused on a cluster without one, before any work) or per
    ``cpus`` CPUs: the shares concatenated in order, the features one process extracts
    (up to float rounding)."""
    return concat(map_parts(lambda parts: dataclasses.replace(work, parts=parts), work.num,
                            use_gpu, cpus, "evaluate"))


def _classifier(source: str, layout: Layout) -> str | None:
    """The classifier folder the FD-classifier extractor loads (source ``train``)."""
    return str(layout.classifier) if source == "train" else None


def balanced_indices(labels: np.ndarray, num: int, seed: int = 0) -> np.ndarray:
    """``num`` indices of ``labels`` [N], classes balanced (counts differ by at most one),
    drawn without replacement from one seeded stream, in class-interleaved order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked = [per_class[i % len(classes)][i // len(classes)] for i in range(num)]
    return np.asarray(picked, dtype=np.int64)


def floors(ev: Evaluator, dataset, tokenizer, reference: dict[str, np.ndarray], num: int,
           batch: int = 250, seed: int = 0, prc: str = "balanced"
           ) -> dict[str, dict[str, float | int | str]]:
    """What no generator in this latent space can beat, scored like one: ``num``
    class-balanced real training images (``real``), and the same images encoded and
    decoded by the tokenizer (``reconstructed``: the posterior mean, scaled as the shards
    store it). ``dataset``: a :class:`pipeline.data.Dataset` split."""
    idx = balanced_indices(dataset.labels, num, seed)
    labels = torch.as_tensor(dataset.labels[idx])
    chunks = [idx[i:i + batch] for i in range(0, num, batch)]

    def reconstructed(chunk: np.ndarray) -> torch.Tensor:
        mean, _ = tokenizer.encode(dataset.load(chunk))
        return tokenizer.decode(mean * tokenizer.scale_factor)

    real = extract(ev, (dataset.load(c) for c in chunks), num, "real images")
    recon = extract(ev, (reconstructed(c) for c in chunks), num, "reconstructed")
    return {"real": score(ev, real, labels, reference, seed, prc),
            "reconstructed": score(ev, recon, labels, reference, seed, prc)}


def load_trained(generator_dir: Path, device: str | None = None, layout: Layout = LAYOUT
                 ) -> tuple[Any, dict, Any]:
    """(G in eval mode, its metadata, the tokenizer it was trained with) of a generator
    folder, on ``device`` (default: the GPU when there is one)."""
    from gat.io import load_generator
    from pipeline.pretrained.tokenizer import load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen, meta = load_generator(generator_dir, device)
    return gen, meta, load_tokenizer(meta["tokenizer"], device, meta["scale_factor"], layout,
                                     meta.get("tokenizer_revision", ""))


def evaluate_trained(params: Params, generator_dir: Path, gen, meta: dict, tokenizer,
                     grid: Path, layout: Layout = LAYOUT) -> dict[str, Any]:
    """What the ``evaluate`` stage measures of a trained G (``gen``, loaded from
    ``generator_dir``): evaluate.num_samples balanced samples against data/reference
    (evaluator.source; on every GPU of the Ray cluster with runtime.use_gpu), G's GFLOPs
    and sizes; the class-row grid written to ``grid``. Returns the metrics with the
    generator's ``run_key``."""
    source = params.evaluator.source
    ev = evaluator(source, _classifier(source, layout))
    reference = load_reference(reference_path(layout), metric=ev.metric)
    check_reference(reference, ev, layout)  # before sampling: width, given file unchanged
    cfg, seed = params.evaluate, params.study.seed + 1  # not the training z stream
    if params.runtime.on_pool:
        work = SampleFeatureWork(generator_dir, layout, source, cfg.num_samples, cfg.batch,
                                 cfg.psi, seed)
        out = sampled_features_on_ray(work, params.runtime.use_gpu,
                                      params.runtime.cpus_per_worker)
        metrics = score_samples(ev, out, gen.num_classes, reference, cfg.psi, seed, cfg.prc)
    else:
        metrics = evaluate_generator(ev, gen, tokenizer, reference, cfg.num_samples,
                                     cfg.batch, cfg.psi, seed, cfg.prc)
    metrics.update(model_facts(gen, meta))
    with atomic_path(grid) as tmp:
        grid_images = class_grid(gen, tokenizer, cfg.psi, cfg.grid_seeds)
        save_grid(grid_images, tmp, nrow=cfg.grid_seeds)
    return {**metrics, "run_key": meta["run_key"]}


def evaluate_folder(params: Params, generator_dir: Path, grid: Path,
                    layout: Layout = LAYOUT) -> dict[str, Any]:
    """:func:`evaluate_trained` of a generator folder, logged to the MLflow run of the
    training configuration that made it (``mlflow_run_id`` in the metrics)."""
    gen, meta, tokenizer = load_trained(generator_dir, layout=layout)
    metrics = evaluate_trained(params, generator_dir, gen, meta, tokenizer, grid, layout)
    return {**metrics, "mlflow_run_id": log_evaluation(params, meta, metrics, [grid], layout)}


def log_evaluation(params: Params, meta: dict, metrics: dict, pictures: list[Path],
                   layout: Layout = LAYOUT) -> str:
    """Into the generator's training run: the metric under its own name (FID or
    FD-classifier) and ``eval.*`` at its last step, settings as tags, the pictures under
    ``eval/``. Returns the run id."""
    from pipeline import tracking

    tr = tracking.tracker(params, layout)
    run_id = tracking.training_run(
        tr, params, meta["name"], meta["run_key"], meta["study_key"],
        {k: meta[k] for k in ("name", "steps", "run_key", "study_key")})
    step = int(meta["steps"])
    tr.log_metrics(run_id, {metrics["metric"]: metrics["fd"]}, step)
    tr.log_metrics(run_id, {f"eval.{k}": v for k, v in metrics.items()}, step)
    # tags, not params: evaluation settings may change while the training run stays
    tr.set_tags(run_id, {"eval.metric": metrics["metric"],
                         "eval.num_samples": metrics["num_samples"], "eval.psi": metrics["psi"],
                         "eval.prc": metrics["prc"]})
    for picture in pictures:
        tr.log_artifact(run_id, picture, "eval")
    return run_id


def describe_metrics(metrics: dict[str, Any]) -> str:
    """One line: the FD under its name, precision, recall, class accuracy, GFLOPs."""
    line = (f"{metrics['metric']} {metrics['fd']:.4g} ({metrics['num_samples']} samples), "
            f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}")
    if "class_accuracy" in metrics:
        line += f", class accuracy {metrics['class_accuracy']:.3f}"
    if "is" in metrics:
        line += f", {metrics['is_metric']} {metrics['is']:.3f}"
    return line + (f", G {metrics['g_gflops']:.4g} GFLOPs" if "g_gflops" in metrics else "")


def generator_fd(gen, tokenizer, num: int, layout: Layout = LAYOUT, rank: int = 0,
                 world: int = 1) -> float:
    """FD of ``num`` samples of ``gen`` against data/reference, with the extractor that
    made the reference (FD-classifier or FID): the training-time proxy, computed where G
    is (the extractor is loaded on G's device; ``tokenizer`` should be there too).

    With ``world`` > 1 (the size of the default torch.distributed group, this process
    its ``rank``), each worker draws, decodes and extracts only its share of the samples
    (:func:`gat.sample.shard`: the same set for any number of workers) and the features'
    :func:`~pipeline.fidelity.moments` are all-reduced: every worker returns the same
    value, the one a single process gets up to float rounding. Every worker must call it.
    """
    reference = load_reference(reference_path(layout))
    source = SOURCES[str(reference["extractor"])]
    device = next(gen.parameters()).device
    ev = evaluator(source, _classifier(source, layout), str(device))
    shift = torch.from_numpy(reference["mu"]).double()
    if len(shard(num, rank, world)):
        feats = generated_features(ev, gen, tokenizer, num, desc="fd proxy", rank=rank,
                                   world=world)["features"]
    else:  # more workers than samples: this one adds nothing
        feats = torch.zeros(0, len(shift), dtype=torch.float64)
    check_dims(feats.shape[1], reference)
    total = moments(feats.to(device), shift)  # on G's device: NCCL reduces GPU tensors
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return statistics_distance(moments_statistics(total, shift), reference)
