"""FID and its offline stand-in, computed with torch-fidelity's extractors and metrics.

``evaluator.source``:
- ``inception``: torch-fidelity's Inception-v3 (``inception-v3-compat``), standard FID,
  comparable with papers. Its weights download from GitHub on first use; offline, put the
  file's path in ``$GAT_INCEPTION_WEIGHTS``.
- ``train``: the pipeline's own classifier (data/classifier), registered with
  torch-fidelity as the feature extractor ``gat-classifier``. The Frechet distance in its
  feature space is reported as "FD-classifier" and is NOT FID: its values are not
  comparable with any paper, only between runs of this pipeline.

Precision and recall (torch-fidelity's k-NN manifolds, k=3) are measured in the same
feature space as the distance, by one of two protocols (``evaluate.prc``): ``adm``, the one
of ADM's evaluator and the paper's tables (every sample against the reference's 10,000
kept features), or ``balanced`` (equally many of each, at most 10,000: the embedded
study's). The Inception Score comes from the same forward pass (Inception's unbiased
logits; the stand-in's "IS-classifier" from the classifier's, which is not IS). sFID is not
offered: it needs Inception's spatial mixed_6/conv features, which torch-fidelity's
extractor does not expose (its "768" output is spatially pooled). Features are extracted
batch by batch, so neither the reference split nor the generated samples ever sit in
memory as images.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor
from tqdm import tqdm

from pipeline.files import atomic_path
from pipeline.layout import LAYOUT, Layout

CLASSIFIER_EXTRACTOR = "gat-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_WEIGHTS_ENV = "GAT_INCEPTION_WEIGHTS"
REFERENCE_FILE = "stats.npz"  # in data/reference, beside info.json
PRC_MAX = 10_000  # reference features kept for precision/recall (ADM's reference batch)
PRC_PROTOCOLS = ("balanced", "adm")
IS_SPLITS = 10  # ADM's and torch-fidelity's: the score's mean over 10 splits of the samples


SOURCES = {CLASSIFIER_EXTRACTOR: "train", INCEPTION_EXTRACTOR: "inception"}


def metric_name(source: str, samples: int = 0) -> str:
    """What the number is: "FID" with Inception, else "FD-classifier" (a stand-in, never
    FID). With ``samples``, the count as papers write it: "FID-5K", "FD-classifier-1K"."""
    name = "FID" if source == "inception" else "FD-classifier"
    if samples:
        name += f"-{samples // 1000}K" if samples % 1000 == 0 else f"-{samples}"
    return name


def score_name(source: str) -> str:
    """What the Inception Score is: "IS" with Inception, else "IS-classifier" (a stand-in
    of the embedded profile, computed from the classifier's logits, never IS)."""
    return "IS" if source == "inception" else "IS-classifier"


def proxy_name(samples: int, layout: Layout = LAYOUT) -> str:
    """The training-time proxy's name: the reference's metric at ``samples`` samples."""
    info = json.loads((layout.reference / "info.json").read_text())
    return metric_name(SOURCES[info["extractor"]], samples)


def describe(source: str) -> str:
    """The metric with what it is, for print-outs and dry runs."""
    return ("FID (Inception-v3, comparable with papers)" if source == "inception"
            else "FD-classifier (the offline stand-in's features: not FID)")


class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity adapter for :class:`pipeline.Classifier`.

    ``feature_extractor_weights_path``: a classifier directory (save_classifier), or None
    for the pipeline's trained one (data/classifier). Input: uint8 [B, 3, H, W] at the
    resolution the classifier was trained on; output: (features [B, F], logits [B, K]) in
    the order of ``features_list``.
    """

    def __init__(self, name: str, features_list: list[str],
                 feature_extractor_weights_path: str | None = None, **kwargs):
        super().__init__(name, features_list)
        from pipeline.pretrained.classifier import load_classifier

        self.model = load_classifier(feature_extractor_weights_path or "train")

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected uint8 [B, 3, H, W], got {x.dtype} "
                             f"{list(x.shape)}")
        feats, logits = self.model(x)
        out = {"features": feats, "logits": logits}
        return tuple(out[f] for f in self.features_list)


if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatures)


@dataclass(frozen=True)
class Evaluator:
    """A torch-fidelity feature extractor and what its outputs mean."""

    extractor: FeatureExtractorBase
    metric: str  # "FID" or "FD-classifier"
    outputs: tuple[str, str | None]  # (feature layer, logits layer or None)
    device: torch.device
    class_logits: bool = False  # the logits are the dataset's classes (class accuracy)

    @property
    def name(self) -> str:
        return self.extractor.get_name()


@functools.lru_cache(maxsize=4)
def evaluator(source: str = "train", classifier: str | None = None,
              device: str | None = None) -> Evaluator:
    """The feature extractor for ``evaluator.source`` (cached: training calls it often).

    ``classifier``: a classifier directory instead of data/classifier (source ``train``).
    ``device``: where it runs (a training worker's own GPU); default the current GPU when
    there is one, else the CPU. Inception's logits (for the Inception Score) index
    ImageNet's 1008 classes, not the dataset's: they give no class accuracy.
    """
    if source == "inception":
        name, outputs = INCEPTION_EXTRACTOR, ("2048", "logits_unbiased")
        weights = os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    elif source == "train":
        name, outputs, weights = CLASSIFIER_EXTRACTOR, ("features", "logits"), classifier
    else:
        raise ValueError(f"evaluator.source {source!r}: expected 'train' or 'inception'")
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    layers = [o for o in outputs if o]
    # Building the network draws its initial weights (then overwritten by the checkpoint)
    # from torch's global RNG. A training worker's first FD proxy builds it mid-run, and
    # those draws would shift the run's noise from then on: runtime.fd_every would change
    # the trained model, and a process that had the extractor cached (a reused Tune trial
    # actor) would train differently from a fresh one. So the caller's RNG is left as found.
    with torch.random.fork_rng(devices=[]):
        ext = create_feature_extractor(name, layers, cuda=False, verbose=False,
                                       feature_extractor_weights_path=weights).to(where)
    return Evaluator(ext, metric_name(source), outputs, where, class_logits=source == "train")


@torch.no_grad()
def extract(ev: Evaluator, batches: Iterable[torch.Tensor], total: int | None = None,
            desc: str = "features") -> dict[str, torch.Tensor]:
    """Features of uint8 image batches [B, 3, H, W] -> {"features": [N, F] float64 CPU,
    and "logits": [N, K] float32 CPU when the extractor has class logits}."""
    has_logits = ev.outputs[1] is not None
    chunks: dict[str, list[torch.Tensor]] = {"features": [], "logits": []}
    with tqdm(total=total, desc=desc, unit="img", mininterval=5) as bar:
        for images in batches:
            out = ev.extractor(images.to(ev.device))
            chunks["features"].append(out[0].double().cpu())
            if has_logits:
                chunks["logits"].append(out[1].float().cpu())
            bar.update(len(images))
    if not chunks["features"]:
        raise ValueError(f"{desc}: no images to extract features from")
    return {k: torch.cat(v) for k, v in chunks.items() if v}


def concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """:func:`extract`'s outputs of consecutive parts of one image stream, as one output."""
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Features [N, F] -> {"mu": [F], "sigma": [F, F]} (float64), torch-fidelity's way."""
    if len(features) < 2:
        raise ValueError(f"statistics need at least 2 samples, got {len(features)}")
    return fid_features_to_statistics(features.double().cpu())


def _subset(features: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    if len(features) <= n:
        return features
    keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:n]
    return features[keep]


def reference_statistics(ev: Evaluator, batches: Iterable[torch.Tensor],
                         total: int | None = None) -> dict[str, np.ndarray]:
    """Reference of real image batches: mu [F], sigma [F, F], up to PRC_MAX features
    [n, F] for precision/recall, the count, and which metric and extractor made them."""
    return reference_of_features(ev, extract(ev, batches, total, desc="reference")["features"])


def reference_of_features(ev: Evaluator, feats: torch.Tensor) -> dict[str, np.ndarray]:
    """:func:`reference_statistics` of features [N, F] already extracted by ``ev``."""
    return {**statistics(feats), "features": _subset(feats, PRC_MAX).float().numpy(),
            "count": np.array(len(feats)), "metric": np.array(ev.metric),
            "extractor": np.array(ev.name)}


def feature_dim(ev: Evaluator) -> int:
    """F, the width of the extractor's FD features: Inception's pool layer names it
    ("2048"), the classifier stand-in's config holds it."""
    layer = ev.outputs[0]
    return int(layer) if layer.isdigit() else int(ev.extractor.model.config["feature_dim"])


def precomputed_reference(path: str | os.PathLike, dim: int) -> dict[str, np.ndarray]:
    """``mu`` [F] and ``sigma`` [F, F] of a precomputed reference ``.npz`` (ADM's
    ``VIRTUAL_imagenet256_labeled.npz``: Inception pool statistics of its reference batch),
    and ``images`` uint8 [N, R, R, 3] when it holds them (``arr_0``). Refuses a missing
    file, a missing key, and statistics of another width than the evaluator's ``dim``;
    ``images`` are read only when the statistics pass (ADM's take 2 GB)."""
    path = Path(path)
    fix = ("set evaluator.reference to an .npz holding mu [F] and sigma [F, F] of the "
           "evaluator's features, or leave it empty to compute them from data.eval_path")
    if not path.is_file():
        raise FileNotFoundError(f"evaluator.reference: {path} does not exist; {fix}")
    try:
        data = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"evaluator.reference: {path} is not an .npz ({err}); {fix}") from None
    with data:
        for key in ("mu", "sigma"):
            if key not in data.files:
                raise ValueError(f"evaluator.reference: {path} has no key {key!r} (it holds "
                                 f"{', '.join(data.files) or 'nothing'}); {fix}")
        mu, sigma = data["mu"], data["sigma"]
        if mu.shape != (dim,) or sigma.shape != (dim, dim):
            raise ValueError(
                f"evaluator.reference: {path}: mu {list(mu.shape)} and sigma "
                f"{list(sigma.shape)}, but the evaluator's features are {dim}-d (2048 for "
                f"Inception: evaluator.source inception with ADM's file; the stand-in "
                f"classifier's feature_dim for source train); {fix}")
        ref = {"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)}
        if "arr_0" in data.files:
            ref["images"] = data["arr_0"]
    return ref


def reference_path(layout: Layout = LAYOUT) -> Path:
    return layout.reference / REFERENCE_FILE


def save_reference(stats: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write reference statistics as one .npz, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **stats)


def load_reference(path: str | os.PathLike | None = None, metric: str | None = None
                   ) -> dict[str, np.ndarray]:
    """Reference statistics (default: data/reference/stats.npz); with ``metric``, refuse
    ones made by another extractor."""
    path = Path(path or reference_path())
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the `reference` stage "
                                "(dvc repro reference)")
    with np.load(path) as data:
        ref = {k: data[k] for k in data.files}
    made_by = str(ref.get("metric", "?"))
    if metric is not None and made_by != metric:
        raise ValueError(f"{path}: statistics for {made_by}, but the evaluator gives {metric}; "
                         "rerun the `reference` stage (dvc repro reference)")
    return ref


def check_reference(reference: dict[str, np.ndarray], ev: Evaluator,
                    layout: Layout = LAYOUT) -> None:
    """Before sampling: ``reference`` (data/reference) has the evaluator's feature width,
    and the precomputed file it came from (evaluator.reference), if any, still has the
    sha256 the ``reference`` stage recorded: DVC tracks that file by its path only."""
    from pipeline.files import file_sha256

    dim, where = feature_dim(ev), reference_path(layout)
    if reference["mu"].shape != (dim,):
        raise ValueError(f"{where}: mu {list(reference['mu'].shape)}, but the evaluator's "
                         f"features are {dim}-d; rerun the `reference` stage "
                         "(dvc repro reference)")
    info = json.loads((layout.reference / "info.json").read_text())
    given = info.get("given")
    if given and (not Path(given["path"]).is_file()
                  or file_sha256(given["path"]) != given["sha256"]):
        raise ValueError(f"evaluator.reference: {given['path']} is missing or changed since "
                         f"the `reference` stage read it (sha256 {given['sha256'][:12]}...); "
                         "rerun it: dvc repro -f reference")


def frechet_distance(features: torch.Tensor, reference: dict[str, np.ndarray]) -> float:
    """Frechet distance of features [N, F] to reference statistics (torch-fidelity)."""
    check_dims(features.shape[1], reference)
    return statistics_distance(statistics(features), reference)


def statistics_distance(stats: dict[str, np.ndarray], reference: dict[str, np.ndarray]
                        ) -> float:
    """Frechet distance between statistics {"mu": [F], "sigma": [F, F]} and the
    reference's (torch-fidelity)."""
    ref = {"mu": reference["mu"].astype(np.float64), "sigma": reference["sigma"].astype(np.float64)}
    out = fid_statistics_to_metric(stats, ref, verbose=False)
    return float(out["frechet_inception_distance"])  # torch-fidelity's key, whatever the net


def check_dims(dims: int, reference: dict[str, np.ndarray]) -> None:
    """Refuse features whose width is not the reference's (another extractor made it)."""
    if dims != reference["mu"].shape[0]:
        raise ValueError(f"features have {dims} dims, the reference "
                         f"{reference['mu'].shape[0]}: rerun the `reference` stage")


def moments(features: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """What the statistics of a set split among workers add up from: features [N, F] ->
    float64 [1 + F + F * F] on their device: N, the sum and the sum of outer products of
    ``features - shift`` [F] (the reference mean: sums of small numbers keep float64's
    digits when the covariance is recovered from them)."""
    x = features.double() - shift.to(features.device, torch.float64)
    count = torch.tensor([float(len(x))], dtype=torch.float64, device=x.device)
    return torch.cat([count, x.sum(0), (x.T @ x).flatten()])


def moments_statistics(total: torch.Tensor, shift: torch.Tensor) -> dict[str, np.ndarray]:
    """Summed :func:`moments` -> {"mu": [F], "sigma": [F, F]} float64, as
    :func:`statistics` gives for the whole set (unbiased covariance, N - 1)."""
    total, shift = total.double().cpu(), shift.double().cpu()
    dims, n = len(shift), total[0].item()
    if n < 2:
        raise ValueError(f"statistics need at least 2 samples, got {int(n)}")
    mean = total[1 : 1 + dims] / n
    outer = total[1 + dims :].view(dims, dims)
    sigma = (outer - n * torch.outer(mean, mean)) / (n - 1)
    return {"mu": (mean + shift).numpy(), "sigma": sigma.numpy()}


def precision_recall(features: torch.Tensor, reference: dict[str, np.ndarray], seed: int = 0,
                     protocol: str = "balanced", device: torch.device | str = "cpu"
                     ) -> tuple[float, float]:
    """Improved precision and recall (k=3) of generated features [N, F] vs the reference's
    kept features [n <= PRC_MAX, F].

    ``adm``: all N samples against all n reference features, as ADM's evaluator (and the
    paper's tables: 50k samples against the 10k reference batch). ``balanced``: equally
    many of each (min(N, n), seeded subsets): the k-NN radii shrink as a set grows, so
    with N != n one number gains what the other loses; the embedded study compares sizes
    at 2,000 samples this way. The k-NN search is O(N^2): it runs on ``device``.
    """
    if protocol not in PRC_PROTOCOLS:
        raise ValueError(f"evaluate.prc {protocol!r}: expected one of {PRC_PROTOCOLS}")
    real = torch.from_numpy(reference["features"]).float()
    fake = features.float()
    if protocol == "balanced":
        n = min(len(fake), len(real), PRC_MAX)
        fake, real = _subset(fake, n, seed), _subset(real, n, seed)
    out = prc_features_to_metric(fake.to(device), real.to(device), save_cpu_ram=True,
                                 verbose=False)
    return float(out["precision"]), float(out["recall"])


def inception_score(logits: torch.Tensor) -> float:
    """Inception Score of logits [N, K]: exp(E KL(p(y|x) || p(y))), the mean over IS_SPLITS
    splits, torch-fidelity's computation (in sample order: no shuffle, so it is a function
    of the samples alone)."""
    return float(isc_features_to_metric(logits.double(), splits=IS_SPLITS, shuffle=False)
                 ["inception_score_mean"])


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples [N] whose logits [N, K] pick their conditioning class."""
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()
