"""``GATPipeline``: a trained GAT generator and its VAE as a diffusers pipeline.

    import torch
    from pipeline.serving.diffusers_pipeline import GATPipeline

    pipe = GATPipeline.from_pretrained("outputs/pipeline/GAT-T4/4/seed0")   # offline
    images = pipe(class_labels=[0, 7], psi=0.8, guidance=1.5,
                  generator=[torch.Generator().manual_seed(s) for s in (0, 0)]).images

A folder holds ``model_index.json``, ``generator/`` (:class:`GATGeneratorModel`: the EMA
generator's config and safetensors weights) and ``vae/`` (the tokenizer's AutoencoderKL,
its ``scaling_factor`` set to the latent scale G was trained with). One image's z is drawn
on the CPU from its ``torch.Generator``, as ``gat sample`` draws seed s from
``torch.Generator().manual_seed(s)``: a list of generators seeded with s_1..s_n gives
``gat sample``'s images for seeds s_1..s_n, on any device. Decoding goes through the
project's one decoder, :meth:`pipeline.pretrained.tokenizer.Tokenizer.decode` (uint8), so
``np`` / ``pil`` images are ``gat sample``'s PNG pixels exactly.

A folder written by :func:`export_pipeline` also carries this code (:func:`write_code`), in
``generator/``: ``gat_pipeline.py`` (this module's classes), ``gat_models.py``
(gat/models.py), ``gat_sample.py`` (gat/sample.py), ``gat_tokenizer.py`` and
``gat_common.py`` (the decoder), generated from the project's files at export with their
project imports made folder-local, and ``gat_generator.py`` (the generator component's
module); ``model_index.json`` names them as diffusers names custom code, so that
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` needs only diffusers
and torch, not this project. :class:`GATPipeline` reads such a folder with its own classes
(:meth:`GATPipeline.load_config`): no code of the folder runs in the project.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ModelMixin must be a name of this module: diffusers finds the loader of a component
# declared in model_index.json as ["pipeline.serving.diffusers_pipeline", CLASS] by
# looking its base classes up here.
from diffusers import AutoencoderKL, ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from gat.io import load_generator
from gat.models import Z_DIM, Generator, model_config
from gat.sample import UNCONDITIONAL, check_classes, check_settings
from pipeline.files import atomic_path
from pipeline.layout import LAYOUT, Layout
from pipeline.pretrained.tokenizer import Tokenizer, load_tokenizer

FORMAT = 1  # the folder layout this code writes and reads (generator/config.json gat_format)
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# What of a generator's metadata (gat.io) travels with it: where it came from.
PROVENANCE = ("seed", "steps", "lr", "run_key", "study_key", "tokenizer")


class GATGeneratorModel(ModelMixin, ConfigMixin):
    """:class:`gat.models.Generator` as a diffusers model (config.json + safetensors).

    ``training``: the generator's provenance (training seed, steps, run key, tokenizer).
    """

    @register_to_config
    def __init__(self, name: str, channels: int, size: int, num_classes: int,
                 gat_format: int = FORMAT, training: dict[str, Any] | None = None):
        super().__init__()
        self.net = Generator(model_config(name), channels, size, num_classes)

    @classmethod
    def from_generator(cls, gen: Generator, meta: dict[str, Any]) -> GATGeneratorModel:
        """Wrap a trained generator and its gat.io metadata (weights copied)."""
        model = cls(meta["name"], gen.channels, gen.size, gen.num_classes,
                    training={k: meta[k] for k in PROVENANCE if k in meta})
        model.net.load_state_dict(gen.state_dict())
        return model.eval()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> GATGeneratorModel:
        # G's position tables are built in __init__ (not stored): never skip it. Forced, not
        # a default: DiffusionPipeline.from_pretrained passes its own (True wherever
        # accelerate is installed) to every component, as when it loads a folder's copy of
        # this class; a device_map needs it True, and diffusers says so.
        if kwargs.get("device_map") is None:
            kwargs["low_cpu_mem_usage"] = False
        return super().from_pretrained(*args, **kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, psi: float = 1.0,
                guidance: float = 1.0) -> torch.Tensor:
        """Latents [B, C_lat, H, W] of z [B, 64] and classes c [B]."""
        return self.net.sample(z, c, psi, guidance)


def check_folder(path: str | os.PathLike) -> None:
    """Refuse an incomplete folder, or one of another format, naming the file at fault."""
    path = Path(path)
    written_by = "as GATPipeline.save_pretrained writes it (python -m stages.evaluate SIZE)"
    for rel in ("model_index.json", "generator/config.json", "vae/config.json"):
        if not (path / rel).is_file():
            raise FileNotFoundError(f"{path / rel} is missing: a GATPipeline folder holds "
                                    f"model_index.json, generator/ and vae/, {written_by}")
    for sub in ("generator", "vae"):
        if not any((path / sub / name).is_file() for name in WEIGHTS):
            raise FileNotFoundError(f"{path / sub / WEIGHTS[0]} is missing: the {sub}'s "
                                    f"weights, {written_by}")
    index = json.loads((path / "model_index.json").read_text())
    name = index.get("_class_name")
    # ["generator/gat_pipeline", "GATPipeline"] where the folder carries its code
    # (write_code), the class name alone where it does not (save_pretrained)
    carried = isinstance(name, list) and len(name) == 2
    if (name[1] if carried else name) != GATPipeline.__name__:
        raise ValueError(f"{path / 'model_index.json'}: a {name} folder, not a GATPipeline")
    if carried:
        generator = index.get("generator") or [None]
        for rel in dict.fromkeys((f"{name[0]}.py", f"generator/{generator[0]}.py")):
            if not (path / rel).is_file():
                raise FileNotFoundError(
                    f"{path / rel} is missing: model_index.json names it as the code that "
                    "DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) runs, "
                    f"{written_by}")
    version = json.loads((path / "generator/config.json").read_text()).get("gat_format")
    if version != FORMAT:
        raise ValueError(f"{path / 'generator/config.json'}: GAT pipeline format {version}, "
                         f"but this code reads format {FORMAT}; export it again {written_by}")


class GATPipeline(DiffusionPipeline):
    """One-step class-conditional (or unconditional) sampling: z -> G -> VAE decoder."""

    model_cpu_offload_seq = "generator->vae"

    def __init__(self, generator: GATGeneratorModel, vae: AutoencoderKL):
        super().__init__()
        self.register_modules(generator=generator, vae=vae)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        **kwargs: Any) -> GATPipeline:
        """A folder written by :meth:`save_pretrained` (checked first) or a hub id."""
        if Path(pretrained_model_name_or_path).exists():
            check_folder(pretrained_model_name_or_path)
        kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        """model_index.json as this class reads it (diffusers' loader reads it through here).

        A folder that carries its code names its copy of these classes (write_code), which
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` runs. This
        class *is* that code, so it reads the names as its own classes: loading here runs no
        code from the folder and needs no ``trust_remote_code``.
        """
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        name = config.get("_class_name")
        if isinstance(name, list) and name[-1] == cls.__name__:
            config["_class_name"] = cls.__name__
            config["generator"] = [GATGeneratorModel.__module__, GATGeneratorModel.__name__]
        return loaded

    @property
    def num_classes(self) -> int:
        """The generator's classes (0: unconditional)."""
        return self.generator.config.num_classes

    def tokenizer(self) -> Tokenizer:
        """The project's decoder around this pipeline's VAE and its scaling factor."""
        return Tokenizer(self.vae, float(self.vae.config.scaling_factor), "pipeline")

    def _labels(self, class_labels: int | list[int] | torch.Tensor | None,
                batch_size: int | None) -> torch.Tensor:
        """Class ids [B]: the labels asked for, or batch_size zeros when unconditional."""
        if self.num_classes == 0:
            if class_labels is not None:
                raise ValueError(f"class_labels {class_labels}: {UNCONDITIONAL}; ask for "
                                 "batch_size images instead")
            return torch.zeros(batch_size or 1, dtype=torch.long)
        if class_labels is None or batch_size is not None:
            raise ValueError("class_labels: give one class id per image (0.."
                             f"{self.num_classes - 1}); batch_size is for unconditional "
                             "generators")
        ids = torch.as_tensor(class_labels).flatten().tolist()
        check_classes(ids, self.num_classes)
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, class_labels: int | list[int] | torch.Tensor | None = None,
                 batch_size: int | None = None, psi: float = 1.0, guidance: float = 1.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", return_dict: bool = True
                 ) -> ImagePipelineOutput | tuple:
        """Images of ``class_labels`` (or ``batch_size`` of an unconditional generator).

        psi: truncation toward each class's mean w (1: none; >= 0). guidance: w-space
        guidance scale (1: none). generator: one ``torch.Generator`` for the whole batch,
        or a list with one per image (``gat sample``'s seed s is
        ``torch.Generator().manual_seed(s)``). output_type: ``pil``, ``np`` (float32
        [B, H, W, 3] in [0, 1]), ``pt`` (float32 [B, 3, H, W] in [0, 1]) or ``latent``
        (G's latents [B, C, h, w], scaled as G was trained).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}: expected one of {OUTPUT_TYPES}")
        labels = self._labels(class_labels, batch_size)
        check_settings(self.num_classes, psi, guidance)
        if isinstance(generator, list) and len(generator) not in (1, len(labels)):
            raise ValueError(f"generator: a list needs one torch.Generator per image "
                             f"({len(generator)} for {len(labels)} images)")
        device = self._execution_device
        # Drawn in float32 and then cast, so a seed's z is the same at any dtype.
        z = randn_tensor((len(labels), Z_DIM), generator=generator, device=device,
                         dtype=torch.float32)
        latents = self.generator(z.to(self.generator.dtype), labels.to(device), psi, guidance)
        images = latents if output_type == "latent" else _convert(
            self.tokenizer().decode(latents), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _convert(images: torch.Tensor, output_type: str) -> Any:
    """uint8 [B, 3, H, W] -> PIL images, or float32 in [0, 1] (numpy NHWC, torch NCHW)."""
    unit = images.float() / 255
    if output_type == "pt":
        return unit
    array = unit.permute(0, 2, 3, 1).numpy()
    return DiffusionPipeline.numpy_to_pil(array) if output_type == "pil" else array


def uint8_pixels(images: np.ndarray) -> np.ndarray:
    """The pipeline's ``np`` images back to the decoder's uint8 pixels (exactly)."""
    return (images * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- export
# What follows needs the project (its generator folders, tokenizers and layout): it stays.


def build_pipeline(gen: Generator, meta: dict[str, Any], tokenizer: Tokenizer) -> GATPipeline:
    """A pipeline of a trained generator (gat.io metadata) and the tokenizer that made its
    latents; the VAE's ``scaling_factor`` becomes the scale G was trained with."""
    tokenizer.vae.register_to_config(scaling_factor=float(meta["scale_factor"]))
    # from_pretrained recorded the folder it read (an absolute path of this checkout):
    # record the source instead, so that the exported folder does not depend on where the
    # study ran (two builds of a study give the same bytes: tests/study_diff.py)
    if meta.get("tokenizer"):
        tokenizer.vae.register_to_config(_name_or_path=str(meta["tokenizer"]))
    return GATPipeline(GATGeneratorModel.from_generator(gen, meta), tokenizer.vae)


def export_pipeline(generator_dir: str | os.PathLike, out: str | os.PathLike,
                    layout: Layout = LAYOUT) -> Path:
    """Write the pipeline folder of a generator directory (gat.io) to ``out``, atomically,
    with the tokenizer its metadata names (``train``: the layout's data/tokenizer), and the
    code that loads it without the project (:func:`pipeline.serving.remote_code.write_code`)."""
    gen, meta = load_generator(generator_dir)
    tokenizer = load_tokenizer(meta["tokenizer"], "cpu", meta["scale_factor"], layout,
                               meta.get("tokenizer_revision", ""))
    with atomic_path(out) as tmp:
        build_pipeline(gen, meta, tokenizer).save_pretrained(tmp)
        from pipeline.serving.remote_code import write_code  # it reads this module

        write_code(tmp)
    return Path(out)
