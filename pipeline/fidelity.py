"""FID and its offline stand-in, through torch-fidelity.

evaluator.source `inception`: torch-fidelity's Inception-v3 (standard FID, comparable with
papers; needs its weights). `train`: the pipeline's own classifier, registered with
torch-fidelity as a feature extractor; the Frechet distance in its feature space is
reported as "FD-classifier" and is NOT FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from pipeline.params import REPO_ROOT, Params

CLASSIFIER_EXTRACTOR = "gat-fd-classifier"
REFERENCE = REPO_ROOT / "data" / "reference" / "stats.npz"
PRC_REFERENCE = 5000  # real features kept for precision/recall


def metric_name(params: Params) -> str:
    """What the number is: "FID" with Inception, else "FD-classifier" (a stand-in)."""
    return "FID" if params.evaluator.source == "inception" else "FD-classifier"


class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity adapter for :class:`pipeline.pretrained.Classifier` (uint8 input)."""

    source = "train"

    def __init__(self, name: str, features_list: list[str], **kwargs: Any):
        super().__init__(name, features_list)
        from pipeline.pretrained import load_classifier

        self.model = load_classifier(ClassifierFeatures.source)

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
        feats, logits = self.model(x)
        return tuple({"features": feats, "logits": logits}[f] for f in self.features_list)


class _Images(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _extractor(params: Params, features: list[str] | None = None) -> FeatureExtractorBase:
    cuda = torch.cuda.is_available()
    if params.evaluator.source == "inception":
        return create_feature_extractor("inception-v3-compat",
                                        features or ["2048", "logits_unbiased"], cuda=cuda,
                                        verbose=False)
    if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatures)
    return create_feature_extractor(CLASSIFIER_EXTRACTOR, features or ["features", "logits"],
                                    cuda=cuda, verbose=False)


def extract(params: Params, images: torch.Tensor, batch: int = 500) -> dict[str, torch.Tensor]:
    """Features of uint8 images [N, 3, H, W]: {"features": [N, F], "logits": [N, K]}."""
    ext = _extractor(params)
    out = get_featuresdict_from_dataset(_Images(images), ext, batch, torch.cuda.is_available(),
                                        save_cpu_ram=True, verbose=False)
    names = list(out)
    return {"features": out[names[0]].double(), "logits": out[names[1]].float()}


def reference_statistics(params: Params, images: torch.Tensor) -> dict[str, np.ndarray]:
    """mu [F], sigma [F, F] and a subset of features for precision/recall."""
    feats = extract(params, images)["features"]
    stats = fid_features_to_statistics(feats)
    keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:PRC_REFERENCE]
    return {"mu": stats["mu"], "sigma": stats["sigma"], "features": feats[keep].numpy()}


def save_reference(stats: dict[str, np.ndarray], path: Path = REFERENCE) -> None:
    from pipeline.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **stats)


def load_reference(path: Path = REFERENCE) -> dict[str, np.ndarray]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing; run the `reference` stage (dvc repro reference)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def frechet_distance(features: torch.Tensor, reference: dict[str, np.ndarray]) -> float:
    """Frechet distance of features [N, F] against reference statistics (torch-fidelity)."""
    stats = fid_features_to_statistics(features.double().cpu())
    ref = {"mu": reference["mu"].astype(np.float64), "sigma": reference["sigma"].astype(np.float64)}
    return float(fid_statistics_to_metric(stats, ref, verbose=False)[
        "frechet_inception_distance"])


def precision_recall(
    features: torch.Tensor, reference: dict[str, np.ndarray]
) -> tuple[float, float]:
    """Improved precision and recall (k=3) of generated vs reference features."""
    real = torch.from_numpy(reference["features"]).float()
    out = prc_features_to_metric(features.float(), real, save_cpu_ram=True, verbose=False)
    return out["precision"], out["recall"]


@torch.no_grad()
def sample_images(gen, tokenizer, num: int, batch: int = 250, psi: float = 1.0,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` uint8 images [N, 3, H, W] balanced over classes, and their labels [N]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num) % gen.num_classes
    device = next(gen.parameters()).device
    images = []
    for i in range(0, num, batch):
        c = labels[i : i + batch]
        z = torch.randn(len(c), 64, generator=g)
        latents = gen.sample(z.to(device), c.to(device), psi=psi).float().cpu()
        images.append(tokenizer.decode(latents))
    return torch.cat(images), labels


def generator_fd(params: Params, gen, tokenizer, num: int) -> float:
    """FD (or FID) of ``num`` samples of ``gen`` against the reference statistics."""
    was_training = gen.training
    gen.eval()
    images, _ = sample_images(gen, tokenizer, num)
    gen.train(was_training)
    return frechet_distance(extract(params, images)["features"], load_reference())
