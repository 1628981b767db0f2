"""The REPA teacher: a transformers ``Dinov2Model`` giving [cls] + patch tokens.

``facebook/dinov2-base`` (or any hub id or ``save_pretrained`` folder), or ``train``: a
small Dinov2Model that the ``teacher_model`` stage trains on the dataset's labels and saves
to data/teacher_model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.config import TeacherParams
from pipeline.layout import LAYOUT, Layout
from pipeline.pretrained.common import from_pretrained, random_flip, resolve_source

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Teacher:
    """A frozen Dinov2Model giving [cls] + patch tokens for uint8 images.

    Images are resized to ``input_size`` (0: the model's configured size, at most 224:
    DINOv2's config says 518, but REPA feeds 224 px, a 16x16 grid of 14 px patches).
    """

    def __init__(self, model, source: str, input_size: int = 0):
        self.model, self.source = model.eval().requires_grad_(False), source
        cfg = model.config
        self.dim, self.patch = cfg.hidden_size, cfg.patch_size
        self.image_size = input_size or min(cfg.image_size, 224)
        self.grid = self.image_size // self.patch

    @property
    def num_tokens(self) -> int:
        """1 + grid * grid: [cls] and patch tokens (register tokens are dropped)."""
        return 1 + self.grid**2

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> [B, 1 + g*g, dim], g = input size / patch size."""
        x = _imagenet_normalize(images.to(next(self.model.parameters()).device))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        out = self.model(pixel_values=x).last_hidden_state
        # [cls], then registers (if any), then patches: keep [cls] and the patch grid.
        return torch.cat([out[:, :1], out[:, out.shape[1] - self.grid**2 :]], dim=1)


def load_teacher(source: str, device: str | torch.device = "cpu", input_size: int = 0,
                 layout: Layout = LAYOUT, revision: str = "") -> Teacher:
    """Dinov2Model from ``train`` (the layout's data/teacher_model), a hub id at
    ``revision`` (teacher.revision: a commit, or empty for the default branch) or a path."""
    from transformers import Dinov2Model

    model = from_pretrained(Dinov2Model, resolve_source(source, layout.teacher_model),
                            "teacher", revision)
    return Teacher(model.to(device), source, input_size)


def small_dinov2(params: TeacherParams, image_size: int):
    from transformers import Dinov2Config, Dinov2Model

    heads = max(1, params.hidden_size // 32)
    cfg = Dinov2Config(hidden_size=params.hidden_size, num_hidden_layers=params.layers,
                       num_attention_heads=heads, intermediate_size=4 * params.hidden_size,
                       patch_size=params.patch_size, image_size=image_size)
    return Dinov2Model(cfg)


def train_teacher(params: TeacherParams, image_size: int, num_classes: int,
                  sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]], seed: int = 0):
    """Train a small Dinov2Model on labels ([cls] and mean patch token -> linear head).

    Supervised rather than self-distilled: minutes on a CPU, and its tokens still carry
    class-discriminative structure for REPA to align D with.
    """
    torch.manual_seed(seed)
    model = small_dinov2(params, image_size).train()
    head = nn.Linear(2 * params.hidden_size, num_classes)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=params.lr,
                            weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, params.lr, total_steps=params.steps,
                                                pct_start=0.1)
    for _ in tqdm(range(params.steps), desc="teacher", mininterval=5):
        images, labels = sample(params.batch)
        tokens = model(pixel_values=_imagenet_normalize(random_flip(images))).last_hidden_state
        logits = head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1))
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), head.eval()


def _imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float normalised as DINOv2 expects."""
    x = images.float().to(images.device) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
