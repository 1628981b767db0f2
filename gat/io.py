"""Generator artifacts: ``generator.pt`` + ``config.json`` in one directory.

The weights are a plain tensor dict saved by ``torch.save`` and read back with
``weights_only=True`` (no pickled code runs), so the library needs nothing but torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gat.models import Generator, model_config

WEIGHTS, CONFIG = "generator.pt", "config.json"


def save_generator(directory: str | os.PathLike, gen: Generator, meta: dict[str, Any]) -> None:
    """Write G's weights (w averages included) and the metadata needed to rebuild it.

    ``meta`` must hold ``name`` (e.g. ``GAT-T1/2``); the latent shape and class count are
    taken from G itself.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}
    torch.save(state, directory / WEIGHTS)
    config = {**meta, "channels": gen.channels, "size": gen.size, "num_classes": gen.num_classes}
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_generator(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Generator, dict[str, Any]]:
    """Rebuild a generator saved by :func:`save_generator`; returns (G in eval mode, meta)."""
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).exists():
            raise FileNotFoundError(
                f"{directory / name} is missing: expected a directory written by "
                "gat.io.save_generator (generator.pt + config.json)"
            )
    meta = json.loads((directory / CONFIG).read_text())
    cfg = model_config(meta["name"])  # a clear error for an unknown size
    gen = Generator(cfg, meta["channels"], meta["size"], meta["num_classes"]).to(device)
    gen.load_state_dict(torch.load(directory / WEIGHTS, map_location=device,
                                   weights_only=True))
    return gen.eval(), meta
