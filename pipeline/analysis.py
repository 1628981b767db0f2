"""Analyses of trained generators (paper Figs. 4a, 4b, 6b, 9a, 9b): ``gat analyze``.

The measurements are :mod:`gat.analysis`; this module gives them the study's parts and
writes what they found:

- Fig. 4b, each block's contribution: skip the block, re-synthesise, decode, and measure
  the distance to the unablated image. LPIPS (VGG16) when its weights are given
  (:func:`lpips_from_files`: torch-fidelity's ``lpips-vgg16`` on the torchvision VGG16
  file and the lpips package's linear-layer file, both given by the user: no weights can
  be downloaded here, and none ever were in this project); otherwise the Euclidean
  distance between the evaluator's features of the two images, labelled
  "classifier-feature distance (not LPIPS)" (or "Inception-feature distance (not LPIPS)"
  with ``evaluator.source: inception``).
- Figs. 9a / 9b: cosine similarity of each block's input and output, and across different
  z of one class, at the same token position.
- Fig. 4a: PCA of every block's tokens, as images beside the decoded sample.
- Fig. 6b: CKNNA of G's block features (fake images) and of D's block features (real and
  fake images) with the teacher's tokens of the same decoded images. G's folder holds only
  G, so D comes from a checkpoint: the one given, else the training run's last Ray
  checkpoint (``state.pt``, found by the run key in G's metadata); the JSON says which.

The sample set: ``per_class`` z for each of ``samples // per_class`` classes (all of them
when they fit, else spread over the range), drawn from ``seed``: every generator analysed
together sees the same z and classes. Real data for D: as many latents from the train
shards, decoded by the same tokenizer as the fakes, so real and fake images reach the
teacher the same way.

Per-image features for CKNNA are the mean of the patch tokens (G's block outputs, D's
block outputs without [cls], the teacher's patch tokens): G has no [cls] token, and one
pooling for all three keeps the comparison even.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gat import analysis as ga
from gat.io import CONFIG, load_generator
from gat.mng import MNG_VARIANTS, perturb_levels
from gat.models import MNG_LEVELS, Z_DIM, Discriminator, Generator, model_config
from pipeline.evaluation import grid_classes
from pipeline.fidelity import Evaluator, evaluator
from pipeline.files import write_json
from pipeline.layout import LAYOUT, Layout
from pipeline.pretrained.teacher import Teacher, load_teacher
from pipeline.pretrained.tokenizer import Tokenizer, load_tokenizer

ANALYSIS_FILE = "analysis.json"
SAMPLES = 640  # per generator: 10 classes x 64 on Fashion-MNIST
PER_CLASS = 64  # z per class: the paper's Fig. 9 uses 64 images per class
CKNNA_K = 10  # neighbours for CKNNA (REPA's setting)
PCA_SAMPLES = 4  # rows of each PCA figure: one sample of each of the first classes
LPIPS_LABEL = "LPIPS (VGG16)"


# ----------------------------------------------------------------------------- distances


def lpips_from_files(vgg: str | Path, lin: str | Path, device: str | torch.device = "cpu"
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """torch-fidelity's LPIPS (``lpips-vgg16``, Zhang et al. 2018): uint8 images a, b
    [B, 3, H, W] -> [B], from weight files the user gives, offline.

    ``vgg``: torchvision's VGG16 weights (``vgg16-397923af.pth``, the whole model, as
    torchvision saves it); ``lin``: the LPIPS linear layers (the lpips package's
    ``weights/v0.1/vgg.pth`` or torch-fidelity's ``weights-vgg16-lpips.pth``: lin0..lin4).
    torch-fidelity fetches both through torch.hub's cache: they are linked there, in a
    temporary hub folder, under the names it downloads, so nothing is downloaded.
    """
    from urllib.parse import urlparse

    from torch_fidelity.sample_similarity_lpips import URL_VGG16_LPIPS, SampleSimilarityLPIPS
    from torchvision.models import VGG16_Weights

    for path, what in ((vgg, "--lpips-vgg"), (lin, "--lpips-lin")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path}: no such file (LPIPS needs both the "
                                    "VGG16 and the linear-layer weights)")
    hub_before = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        (Path(hub) / "checkpoints").mkdir()
        for path, url in ((vgg, VGG16_Weights.IMAGENET1K_V1.url), (lin, URL_VGG16_LPIPS)):
            (Path(hub) / "checkpoints" / Path(urlparse(url).path).name).symlink_to(
                Path(path).resolve())
        torch.hub.set_dir(hub)
        try:
            model = SampleSimilarityLPIPS("lpips-vgg16").to(device)
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"--lpips-vgg {vgg} / --lpips-lin {lin}: not torchvision's VGG16 "
                             f"and LPIPS's lin0..lin4 weights ({err})") from None
        finally:
            torch.hub.set_dir(hub_before)

    @torch.no_grad()
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(a.to(device), b.to(device)).flatten().float().cpu()

    return distance


class DecodedDistance:
    """A :data:`gat.analysis.Distance` on images: latents [B, C, h, w] are decoded by the
    tokenizer, embedded by ``embed`` (uint8 images -> anything) and compared by
    ``compare(embedding_a, embedding_b) -> [B]``.

    The unablated reference is the same tensor for every block of one call of
    :func:`gat.analysis.block_contributions`: its embedding is kept and reused.
    """

    def __init__(self, tokenizer: Tokenizer, embed: Callable[[torch.Tensor], Any],
                 compare: Callable[[Any, Any], torch.Tensor], label: str):
        self.tokenizer, self.embed, self.compare, self.label = tokenizer, embed, compare, label
        self._reference: torch.Tensor | None = None
        self._embedded: Any = None

    def __call__(self, ablated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if reference is not self._reference:
            self._reference = reference
            self._embedded = self.embed(self.tokenizer.decode(reference))
        return self.compare(self.embed(self.tokenizer.decode(ablated)), self._embedded)

    def with_tokenizer(self, tokenizer: Tokenizer) -> DecodedDistance:
        return DecodedDistance(tokenizer, self.embed, self.compare, self.label)


def feature_distance(tokenizer: Tokenizer, ev: Evaluator) -> DecodedDistance:
    """Euclidean distance of the evaluator's features (those FD uses) of the two images."""

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        return ev.extractor(images.to(ev.device))[0].double().cpu()

    kind = "classifier" if ev.metric.startswith("FD-classifier") else "Inception"
    return DecodedDistance(tokenizer, embed, lambda a, b: (a - b).norm(dim=1).float(),
                           f"{kind}-feature distance (not LPIPS)")


def lpips_distance(tokenizer: Tokenizer,
                   lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                   ) -> DecodedDistance:
    return DecodedDistance(tokenizer, lambda images: images, lpips, LPIPS_LABEL)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Parts:
    """What the analyses use besides G: decoder, image distance, teacher, real latents.

    ``teacher`` None skips CKNNA; ``shards`` None skips D on real data.
    """

    tokenizer: Tokenizer
    distance: DecodedDistance
    teacher: Teacher | None = None
    shards: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def load_parts(decoder: str = "train", evaluator_source: str = "train",
               classifier: str | None = None, teacher: str | None = "train",
               teacher_input_size: int = 0, shards: str | Path | None = None,
               lpips_vgg: str | Path | None = None, lpips_lin: str | Path | None = None,
               device: str | torch.device = "cpu", layout: Layout = LAYOUT,
               decoder_revision: str = "", teacher_revision: str = "") -> Parts:
    """Load the parts: ``decoder`` / ``teacher``: ``train`` (this checkout's stand-in), a
    hub id or a folder (teacher None: no CKNNA); ``classifier``: the FD-classifier folder
    (default data/classifier); ``shards``: latent shards for real data (default
    data/shards/train when it exists, else no D-on-real analysis); LPIPS when both weight
    files are given, else the evaluator's feature distance. ``*_revision``: a hub id's
    commit (empty: its default branch)."""
    device = torch.device(device)
    tok = load_tokenizer(decoder, device, layout=layout, revision=decoder_revision)
    if (lpips_vgg is None) != (lpips_lin is None):
        raise ValueError("LPIPS needs both --lpips-vgg and --lpips-lin (or neither: the "
                         "evaluator's feature distance is used)")
    if lpips_vgg is not None and lpips_lin is not None:
        distance = lpips_distance(tok, lpips_from_files(lpips_vgg, lpips_lin, device))
    else:
        if evaluator_source == "train":
            folder = Path(classifier) if classifier else layout.classifier
            if not (folder / "config.json").exists():
                raise FileNotFoundError(
                    f"--classifier {folder}: no FD-classifier there (config.json, "
                    "classifier.safetensors); give the classifier stage's folder, or run "
                    "`dvc repro classifier` for data/classifier")
            classifier = str(folder)
        distance = feature_distance(tok, evaluator(evaluator_source, classifier))
    if shards is None and (layout.shards / "manifest.json").exists():
        shards = layout.shards
    if shards is not None and not (Path(shards) / "manifest.json").exists():
        raise FileNotFoundError(f"--shards {shards}: no manifest.json there; give the "
                                "encode stage's folder (data/shards/train)")
    teach = (load_teacher(teacher, device, teacher_input_size, layout, teacher_revision)
             if teacher else None)
    return Parts(tok, distance, teach,
                 Path(shards) if shards is not None else None, device)


@dataclass(frozen=True)
class Subject:
    """One generator to analyse.

    ``checkpoint``: where D comes from: a ``state.pt`` (or a file holding D's state dict),
    a Ray checkpoint folder holding one, or a run folder (its newest checkpoint); None:
    the run's last checkpoint under the workspace (by G's ``run_key``), skipped with a
    note if there is none; ``"none"``: no D. ``mng``: how D's K input levels are made
    (the variant G was trained with; G's metadata does not record it): None means the
    metadata's ``mng`` if any, else ``exp`` (the default), noted as an assumption.
    """

    generator: Path
    label: str = ""
    checkpoint: str | Path | None = None
    mng: str | None = None


def load_discriminator(gen: Generator, meta: dict[str, Any], checkpoint: str | Path | None,
                       layout: Layout = LAYOUT, device: str | torch.device = "cpu"
                       ) -> tuple[Discriminator | None, dict[str, Any]]:
    """D for G, and where it came from: {"how", "path", "step", "matches_generator"} or
    {"skipped": why}. Raises on a checkpoint that was given but cannot be used."""
    from pipeline.training.checkpoint import STATE as STATE_FILE
    from pipeline.training.checkpoint import latest as latest_checkpoint

    if checkpoint is not None and str(checkpoint) == "none":
        return None, {"skipped": "no D requested (--checkpoint none)"}
    if checkpoint is None:
        if "run_key" not in meta:
            return None, {"skipped": "G's metadata has no run_key and no --checkpoint was "
                                     "given: no D"}
        run_dir = layout.checkpoints(meta["name"]) / meta["run_key"]
        found = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        if found is None:
            return None, {"skipped": f"no Ray checkpoint of run {meta['run_key']} in "
                                     f"{run_dir}; give --checkpoint for D"}
        path, how = found[1] / STATE_FILE, f"the run's last Ray checkpoint (step {found[0]})"
    else:
        path, how = Path(checkpoint), "given"
        if path.is_dir():
            found = latest_checkpoint(path)
            if (path / STATE_FILE).is_file():
                path = path / STATE_FILE
            elif found is not None:
                path = found[1] / STATE_FILE
                how = f"the given run's newest checkpoint (step {found[0]})"
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no {STATE_FILE} there; give "
                                    "a state.pt, a Ray checkpoint folder or a run folder "
                                    "(outputs/checkpoints/SIZE/RUN_KEY)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    d_state = state.get("D", state)
    repa = sorted((int(m.group(1)), k) for k in d_state
                  if (m := re.fullmatch(r"repa\.(\d+)\.weight", k)))
    if not repa:
        raise ValueError(f"{path}: holds no discriminator (no 'D' entry, no D state dict)")
    teacher_dim = d_state[repa[-1][1]].shape[0]
    d_name = meta.get("d_name") or meta["name"]  # training records D's size when it differs
    disc = Discriminator(model_config(d_name), gen.channels, gen.size, gen.num_classes,
                         teacher_dim)
    try:
        disc.load_state_dict(d_state)
    except RuntimeError as err:
        raise ValueError(f"{path}: its D does not fit {d_name} with G's latent shape and "
                         f"classes ({err})") from err
    info: dict[str, Any] = {"how": how, "path": str(path), "model": d_name,
                            "step": int(state["step"]) if "step" in state else None,
                            "matches_generator": None}
    if "G_ema" in state:  # was this D trained with this very G?
        own = gen.state_dict()
        info["matches_generator"] = all(
            k in state["G_ema"] and torch.equal(v.cpu(), state["G_ema"][k].cpu())
            for k, v in own.items())
    return disc.to(device).eval().requires_grad_(False), info


def real_latents(shards: Path, num: int, seed: int, gen: Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``num`` latents [num, C, h, w], labels [num] and the latents' scale factor, from the
    train shards in the order of one seeded epoch (latents sampled from the posterior and
    scaled, as training reads them)."""
    from pipeline.shards import make_train_loader, read_manifest

    manifest = read_manifest(shards)
    shape = list(manifest["latent_shape"])
    if shape != [gen.channels, gen.size, gen.size]:
        raise ValueError(f"{shards}: latents {shape}, but G makes "
                         f"{[gen.channels, gen.size, gen.size]}: not its training data")
    loader = make_train_loader(shards, min(num, 256), num_workers=0, seed=seed, epochs=1)
    latents, labels, have = [], [], 0
    for batch in loader:
        latents.append(batch["latents"])
        labels.append(batch["labels"])
        have += len(batch["labels"])
        if have >= num:
            break
    if have < num:
        raise ValueError(f"{shards}: {have} samples, fewer than the {num} analysed")
    return torch.cat(latents)[:num], torch.cat(labels)[:num], float(manifest["scale_factor"])


# ----------------------------------------------------------------------------- one generator


def analysis_classes(num_classes: int, samples: int, per_class: int) -> list[int]:
    """The analysed classes: ``samples // per_class`` of them, spread over the range."""
    count = max(1, min(num_classes, samples // per_class))
    return [0] if count == 1 else grid_classes(num_classes, rows=count)


def _pooled(tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, C] on the CPU: one vector per image for CKNNA."""
    return tokens.float().mean(1).cpu()


def _teacher_features(teacher: Teacher, images: torch.Tensor) -> torch.Tensor:
    return _pooled(teacher.tokens(images)[:, 1:])  # patch tokens: G has no [cls]


def _d_features(disc: Discriminator, levels: list[torch.Tensor], c: torch.Tensor, mng: str,
                noise: torch.Generator) -> list[torch.Tensor]:
    """D's pooled patch tokens per block [B, C] for K levels (MNG-perturbed as in training,
    without augmentation)."""
    x = perturb_levels(levels, mng, generator=noise)
    return [_pooled(h[:, 1:]) for h in ga.discriminator_tokens(disc, x, c)]


def _mean_std(rows: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per-block values [depth, n] gathered in pieces -> mean and std over n per block."""
    values = torch.cat(rows, dim=1).double()
    return {"mean": values.mean(1).tolist(), "std": values.std(1, unbiased=False).tolist()}


@torch.no_grad()
def analyze_generator(subject: Subject, parts: Parts, samples: int = SAMPLES,
                      per_class: int = PER_CLASS, seed: int = 0, k: int = CKNNA_K,
                      layout: Layout = LAYOUT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """All analyses of one generator. Returns (numbers, pictures): the numbers as written
    to the JSON; pictures = {"images": uint8 [S, 3, H, W] decoded samples, "pca": uint8
    [depth, S, 3, g, g] PCA of each block's output tokens, one sample of each of the first
    S classes}."""
    device = parts.device
    gen, meta = load_generator(subject.generator, device)
    tok = parts.tokenizer
    if meta.get("scale_factor"):  # decode with the scale G was trained with
        tok = Tokenizer(tok.vae, float(meta["scale_factor"]), tok.source)
    distance = parts.distance.with_tokenizer(tok)
    mng, mng_source = subject.mng, "given"
    if mng is None:
        mng, mng_source = (meta["mng"], "G's metadata") if "mng" in meta else (
            "exp", "assumed (the default; G's metadata does not record it)")
    if mng not in MNG_VARIANTS:
        raise ValueError(f"mng {mng!r}: expected one of {', '.join(MNG_VARIANTS)}")
    if parts.teacher is None:  # D is only measured against the teacher
        disc, d_info = None, {"skipped": "no teacher: D is only used for CKNNA"}
    else:
        disc, d_info = load_discriminator(gen, meta, subject.checkpoint, layout, device)

    classes = analysis_classes(gen.num_classes, samples, per_class)
    z_stream = torch.Generator().manual_seed(seed)  # same z for every generator (CPU draws)
    noise = torch.Generator(device=device).manual_seed(seed + 1)  # D's MNG noise
    contrib, io, cross, g_feats, d_fake, teach_fake = [], [], [], [], [], []
    pca_tokens: list[list[torch.Tensor]] = []
    pca_images: list[torch.Tensor] = []
    for cls in classes:
        z = torch.randn(per_class, Z_DIM, generator=z_stream).to(device)
        c = torch.full((per_class,), cls, device=device)
        cap = ga.capture_blocks(gen, z, c)
        contrib.append(ga.block_contributions(gen, z, c, distance))
        io.append(torch.stack([ga.token_cosine(i, o).cpu() for i, o in
                               zip(cap.inputs, cap.outputs)]))
        cross.append(torch.tensor([[ga.cross_z_cosine(o)] for o in cap.outputs]))
        g_feats.append(torch.stack([_pooled(o) for o in cap.outputs]))
        images = tok.decode(cap.latents[-1])
        if parts.teacher is not None:
            teach_fake.append(_teacher_features(parts.teacher, images))
            if disc is not None:
                d_fake.append(torch.stack(_d_features(disc, cap.latents, c, mng, noise)))
        if len(pca_images) < PCA_SAMPLES:
            pca_images.append(images[:1])
            pca_tokens.append([o[:1].cpu() for o in cap.outputs])

    n = len(classes) * per_class
    result: dict[str, Any] = {
        "label": subject.label or meta["name"], "generator": str(subject.generator),
        "model": meta["name"], "run_key": meta.get("run_key"), "steps": meta.get("steps"),
        "depth": len(gen.blocks), "classes": classes, "per_class": per_class, "samples": n,
        "contribution": {"distance": distance.label, **_mean_std(contrib)},
        "io_cosine": _mean_std(io),
        "cross_z_cosine": _mean_std(cross),  # spread over classes
        "discriminator": d_info, "mng": mng, "mng_source": mng_source,
    }
    result["cknna"] = _alignment(parts, gen, disc, k, n, seed, g_feats, d_fake, teach_fake,
                                 mng, noise)
    tokens = [torch.cat([row[b] for row in pca_tokens]) for b in range(len(gen.blocks))]
    pictures = {"images": torch.cat(pca_images),
                "pca": torch.stack([ga.pca_images(t) for t in tokens])}
    return result, pictures


def _alignment(parts: Parts, gen: Generator, disc: Discriminator | None, k: int, n: int,
               seed: int, g_feats: list, d_fake: list, teach_fake: list, mng: str,
               noise: torch.Generator) -> dict[str, Any]:
    """Fig. 6b: CKNNA per block of G (fake), D (fake) and D (real) vs the teacher."""
    if parts.teacher is None:
        return {"skipped": "no teacher given"}
    if n < 4:
        return {"skipped": f"{n} samples: CKNNA needs at least 4"}
    k_used = min(k, n - 1)
    teacher_fake = torch.cat(teach_fake)

    def curve(blocks: torch.Tensor, target: torch.Tensor) -> list[float | None]:
        return [_finite(ga.cknna(f, target, k_used)) for f in blocks]

    out: dict[str, Any] = {"k": k_used, "teacher": parts.teacher.source,
                           "features": "mean of patch tokens (G, D, teacher)",
                           "g_fake": curve(torch.cat(g_feats, dim=1), teacher_fake)}
    if disc is None:
        out["d_fake"] = out["d_real"] = None
        return out
    out["d_fake"] = curve(torch.cat(d_fake, dim=1), teacher_fake)
    if parts.shards is None:
        out["d_real"], out["real"] = None, "skipped: no shards (real latents) given"
        return out
    latents, labels, scale = real_latents(parts.shards, n, seed, gen)
    tok = Tokenizer(parts.tokenizer.vae, scale, parts.tokenizer.source)
    d_real, teach_real = [], []
    for x, c in zip(latents.split(256), labels.split(256)):
        x, c = x.to(parts.device), c.to(parts.device)
        teach_real.append(_teacher_features(parts.teacher, tok.decode(x)))
        d_real.append(torch.stack(_d_features(disc, [x] * MNG_LEVELS, c, mng, noise)))
    out["d_real"] = curve(torch.cat(d_real, dim=1), torch.cat(teach_real))
    out["real"] = f"{n} latents from {parts.shards}, decoded by the same tokenizer"
    return out


def _finite(value: float) -> float | None:
    """JSON has no NaN: a degenerate measurement is written as null."""
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- the command


def default_labels(metas: Sequence[dict[str, Any]]) -> list[str]:
    """Model name (and MNG variant when recorded); numbered when two would read alike."""
    labels = [" ".join(str(m[k]) for k in ("name", "mng") if m.get(k)) for m in metas]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return labels


def analyze(subjects: Sequence[Subject], out: str | Path, parts: Parts,
            samples: int = SAMPLES, per_class: int = PER_CLASS, seed: int = 0, k: int = CKNNA_K,
            layout: Layout = LAYOUT) -> dict[str, Any]:
    """Analyse one or two generators (the second side by side with the first) and write,
    atomically, into ``out``:

    - ``analysis.json``: every number (per generator: contributions, cosines, CKNNA, where
      D came from) and the settings;
    - ``contributions.png`` (Fig. 4b, bars per block), ``similarity.png`` (Figs. 9a, 9b),
      ``cknna.png`` (Fig. 6b; only with a teacher), ``pca_<i>.png`` (Fig. 4a, generator i);
    - ``compare.png`` with two generators: the three measurements, one column each.

    Returns what ``analysis.json`` holds.
    """
    from pipeline import plots

    if per_class < 2 or samples < max(4, per_class):
        raise ValueError(f"samples {samples}, per class {per_class}: Fig. 9b compares pairs "
                         "of z within a class (per class >= 2) and CKNNA needs >= 4 samples "
                         "(samples >= max(4, per class))")
    if not 1 <= len(subjects) <= 2:
        raise ValueError(f"analyze takes one generator or two to compare, got {len(subjects)}")
    for s in subjects:
        if not (Path(s.generator) / CONFIG).is_file():
            raise FileNotFoundError(f"generator {s.generator}: no such folder; give a folder "
                                    "written by training (outputs/train/SIZE/seedN/generator)")
    metas = [json.loads((Path(s.generator) / CONFIG).read_text()) for s in subjects]
    labels = default_labels(metas)
    subjects = [replace(s, label=s.label or label) for s, label in zip(subjects, labels)]
    out = Path(out)
    results, pictures = [], []
    for subject in subjects:
        result, picture = analyze_generator(subject, parts, samples, per_class, seed, k, layout)
        results.append(result)
        pictures.append(picture)
    summary = {"generators": results,
               "settings": {"samples": samples, "per_class": per_class, "seed": seed, "k": k,
                            "distance": results[0]["contribution"]["distance"]}}
    write_json(out / ANALYSIS_FILE, summary)
    plots.contribution_plot(results, out / "contributions.png")
    plots.similarity_plot(results, out / "similarity.png")
    if all("skipped" not in r["cknna"] for r in results):
        plots.cknna_plot(results, out / "cknna.png")
    for i, (result, picture) in enumerate(zip(results, pictures)):
        plots.pca_plot(picture["images"], picture["pca"], result["label"],
                       out / f"pca_{i}.png")
    if len(results) == 2:
        plots.compare_plot(results, out / "compare.png")
    return summary
