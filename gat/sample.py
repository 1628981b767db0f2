"""Sampling from a trained generator: chosen classes and seeds, truncation, w guidance.

Two uses:
- reproducible pictures (``gat sample``): :func:`sample_latents` gives one z per seed,
  shared by every class, so a grid's row is a class and its column a seed;
- evaluation: :func:`balanced_batches` streams N samples whose classes are balanced
  (counts differ by at most one), from one seeded random stream.

Latents only: decoding them to pixels needs the tokenizer the latents came from, which
lives a floor up (:mod:`pipeline.pretrained.tokenizer`), so the library needs only torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gat.models import Z_DIM, Generator

# ----------------------------------------------------------------------------- arguments


def parse_seeds(text: str, what: str = "seeds") -> list[int]:
    """``"0-3,7"`` -> [0, 1, 2, 3, 7]; ranges are inclusive, order is kept. ``what`` names
    the list in errors."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"{what} {text!r}: {part!r} is not N or N-M (e.g. 0-7,11)") from None
        if last < first:
            raise ValueError(f"{what} {text!r}: range {part!r} runs backwards; write "
                             f"{last}-{first}")
        seeds += range(first, last + 1)
    return seeds


UNCONDITIONAL = "the generator is unconditional (trained without classes): it takes no class ids"


def all_classes(num_classes: int) -> list[int]:
    """Every class id of a generator; an unconditional one (0 classes) has its one
    internal id, 0, which no caller names."""
    return list(range(num_classes)) if num_classes else [0]


def check_classes(classes: list[int], num_classes: int) -> None:
    """Refuse class ids a generator does not have, naming the allowed range."""
    if num_classes == 0:
        if classes:
            raise ValueError(f"classes {classes}: {UNCONDITIONAL}")
        return
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} out of range: the generator has classes "
                         f"0..{num_classes - 1}")


def check_ids(classes: list[int], num_classes: int) -> None:
    """:func:`check_classes` for ids a caller got from :func:`all_classes` or named itself
    (an unconditional G's internal id 0 passes)."""
    if classes != all_classes(num_classes):
        check_classes(classes, num_classes)


def check_settings(num_classes: int, psi: float, guidance: float) -> None:
    """Refuse a negative truncation psi, and guidance for an unconditional generator."""
    if psi < 0:
        raise ValueError(f"psi {psi:g}: truncation must be >= 0 (1: none, 0: every sample "
                         "is its class's mean w)")
    if num_classes == 0 and guidance != 1.0:
        raise ValueError(f"guidance {guidance:g}: {UNCONDITIONAL}, so there is nothing to "
                         "guide toward; leave guidance at 1")


def parse_classes(text: str, num_classes: int) -> list[int]:
    """``"all"`` or ``"0,3,7"`` -> class indices, each checked against ``num_classes``."""
    if text.strip() == "all":
        return all_classes(num_classes)
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"classes {text!r}: expected 'all' or integers like 0,3,7") from None
    check_classes(classes, num_classes)
    return classes


# ----------------------------------------------------------------------------- latents


def seed_z(seed: int) -> torch.Tensor:
    """The z [Z_DIM] of one seed: the same on every machine and device (drawn on CPU)."""
    return torch.randn(Z_DIM, generator=torch.Generator().manual_seed(seed))


def _device(gen: Generator) -> torch.device:
    return next(gen.parameters()).device


@torch.no_grad()
def sample_latents(
    gen: Generator, classes: list[int], seeds: list[int], psi: float = 1.0,
    guidance: float = 1.0, batch: int = 64,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Latents [len(classes) * len(seeds), C, H, W], class-major, on the CPU.

    An unconditional G takes ``classes=[0]`` (what :func:`all_classes` gives it).

    Returns the latents and the (class, seed) of each. The same seed gives the same z for
    every class, so a row of a grid shows one class and a column one z.
    """
    check_ids(classes, gen.num_classes)
    check_settings(gen.num_classes, psi, guidance)
    pairs = [(c, s) for c in classes for s in seeds]
    z_of = {s: seed_z(s) for s in seeds}
    device, out = _device(gen), []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        z = torch.stack([z_of[s] for _, s in chunk]).to(device)
        c = torch.tensor([c for c, _ in chunk], device=device)
        out.append(gen.sample(z, c, psi=psi, guidance=guidance).float().cpu())
    return torch.cat(out), pairs


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """Labels [num]: 0, 1, ..., K-1, 0, 1, ...: every class count is num // K or one more."""
    return torch.arange(num) % num_classes


def shard(num: int, rank: int, world: int) -> range:
    """The indices of ``num`` samples that worker ``rank`` of ``world`` takes: contiguous
    shares whose sizes differ by at most one, together every index once."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} of {world} workers: expected 0 <= rank < world")
    return range(rank * num // world, (rank + 1) * num // world)


@torch.no_grad()
def balanced_batches(
    gen: Generator, num: int, batch: int, psi: float = 1.0, guidance: float = 1.0,
    seed: int = 0, rank: int = 0, world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (latents [B, C, H, W] float32 on G's device, labels [B] on the CPU).

    ``num`` samples in all, classes balanced; z comes from one CPU stream seeded by
    ``seed``, so the same (num, batch, seed) gives the same set on any device. With
    ``world`` > 1, only the samples of :func:`shard` (rank, world): sample i keeps its
    class and z whatever the number of workers, so the shares together are the set one
    process draws.
    """
    labels = balanced_labels(num, max(gen.num_classes, 1))  # unconditional: all 0
    rng = torch.Generator().manual_seed(seed)
    # Every z drawn in one process's chunks (cheap): the stream, not the share, fixes them.
    z = torch.cat([torch.randn(len(labels[s : s + batch]), Z_DIM, generator=rng)
                   for s in range(0, num, batch)]) if num else torch.zeros(0, Z_DIM)
    device, share = _device(gen), shard(num, rank, world)
    for start in range(share.start, share.stop, batch):
        stop = min(start + batch, share.stop)
        c = labels[start:stop]
        yield gen.sample(z[start:stop].to(device), c.to(device), psi=psi,
                         guidance=guidance).float(), c
