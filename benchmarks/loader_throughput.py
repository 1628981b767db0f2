"""Latents per second from webdataset shards: the training loader against a baseline loader.

    python benchmarks/loader_throughput.py [--baseline da433ab] [--rounds 3] [--samples 40000]
                                           [--workers 2] [--batch 256] [--seconds 6]

Writes synthetic 4x32x32 fp16 posterior shards (the paper's latent shape: ImageNet 256 px
through SD-VAE) and 17x96 fp16 teacher tokens with the pipeline's own writer to a
temporary folder, then reads them as training does (endless, shuffle buffer 1000, latents
sampled from mean and std in the DataLoader workers, batches handed to the main process)
with two loaders in one run:

- ``baseline``: ``make_train_loader`` of ``pipeline/shards.py`` at git revision
  ``--baseline`` (da433ab: the hand-written tar reader, split, shuffle and batching around
  a plain DataLoader, local paths only);
- ``current``: ``make_train_loader`` of this checkout (webdataset's tar reader,
  ``wds.shuffle``, ``wds.batched``, ``wds.WebLoader``; reads URLs), from the folder path
  and, for the URL path, through ``pipe:cat``.

Rounds alternate the order of the loaders (ABBA...), so a change in the machine's load
hits both alike. Prints each measurement, then the median rate of each loader and the
ratio current / baseline, with the 1-minute load average (``uptime``) before and after.

Then what a training run pays: the CPU time the loader's worker process spends per batch
of the embedded study's shapes (latents 4x16x16, teacher tokens 17x96, batch 32, one
loader worker), batches taken 10 ms apart, for each loader, alternating: CPU time does not
change with the machine's other load the way a rate does.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import shards as current  # noqa: E402 (after the path: run as a script)


def load_baseline(rev: str, folder: Path) -> ModuleType:
    """``pipeline/shards.py`` as it was at git revision ``rev``, imported as a module."""
    source = subprocess.run(["git", "show", f"{rev}:pipeline/shards.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    path = folder / f"shards_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # DataLoader workers unpickle its classes by name
    spec.loader.exec_module(module)
    return module


def make_shards(root: Path, samples: int, shape=(4, 32, 32), tokens=(17, 96)) -> None:
    """``samples`` latent samples (shards of 2,000) and matching teacher tokens."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(256, *shape)).astype(np.float16)
    tok = rng.normal(size=(256, *tokens)).astype(np.float16)

    def latents(idx):
        return [current.latent_fields(mean[j % 256], np.abs(mean[j % 256]), j % 10)
                for j in idx]

    def teacher(idx):
        return [current.token_fields(tok[j % 256]) for j in idx]

    shards = current.write_shards(root / "shards", samples, 2000, latents, "bench", 1000,
                                  "write")
    current.write_manifest(root / "shards", {
        "samples": samples, "shards": shards, "num_classes": 10,
        "latent_shape": list(shape), "scale_factor": 0.18215})
    tshards = current.write_shards(root / "teacher", samples, 2000, teacher, "bench", 1000,
                                   "write")
    current.write_manifest(root / "teacher", {"samples": samples, "shards": tshards,
                                              "token_shape": list(tokens)})


def steady_rate(loader, workers: int, seconds: float) -> float:
    """Latents/s over ``seconds`` of endless reading, after 2 warm-up batches per worker."""
    stream = iter(loader)
    for _ in range(2 * max(1, workers)):
        next(stream)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        n += next(stream)["latents"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del stream
    return rate


def cpu_per_batch(make, batches: int) -> float:
    """CPU milliseconds the loader's one worker process spends per batch, consumed at a
    pace (10 ms apart) rather than flat out: what a training run pays for its data, which
    the machine's other load does not change."""
    stream = iter(make())
    for _ in range(20):
        next(stream)
    workers = psutil.Process().children(recursive=True)
    before = sum(sum(w.cpu_times()[:2]) for w in workers)
    for _ in range(batches):
        next(stream)
        time.sleep(0.01)
    spent = sum(sum(w.cpu_times()[:2]) for w in workers) - before
    del stream
    return 1000 * spent / batches


def compare_cpu(baseline: ModuleType, root: Path, args: argparse.Namespace) -> None:
    """The embedded study's shapes (latents 4x16x16, tokens 17x96, batch 32, one loader
    worker: runtime.loader_workers 1): CPU ms per batch of each loader, alternating."""
    make_shards(root / "small", 8000, shape=(4, 16, 16))
    shards, tokens = root / "small" / "shards", root / "small" / "teacher"
    kw = {"num_workers": 1, "shuffle_buffer": 1000, "teacher_dir": tokens}
    makers = {"baseline": lambda: baseline.make_train_loader(shards, 32, **kw),
              "current": lambda: current.make_train_loader(shards, 32, **kw)}
    costs: dict[str, list[float]] = {name: [] for name in makers}
    for r in range(args.rounds):
        for name in (list(makers) if r % 2 == 0 else list(reversed(makers))):
            costs[name].append(cpu_per_batch(makers[name], 300))
    med = {name: statistics.median(v) for name, v in costs.items()}
    print(f"CPU of the loader worker per batch of 32 (4x16x16 + 17x96 tokens): median of "
          f"{args.rounds} rounds baseline {med['baseline']:.2f} ms, current "
          f"{med['current']:.2f} ms; current / baseline = "
          f"{med['current'] / med['baseline']:.2f}")


def loaders(baseline: ModuleType, root: Path, args: argparse.Namespace, teacher: bool):
    """name -> a function making that loader (shards under ``root``)."""
    kw = {"num_workers": args.workers, "shuffle_buffer": 1000}
    shards, tokens = root / "shards", root / "teacher" if teacher else None
    pipe_tokens = f"pipe:cat {tokens}/{{path}}" if teacher else None
    return {
        "baseline": lambda: baseline.make_train_loader(shards, args.batch, teacher_dir=tokens,
                                                       **kw),
        "current": lambda: current.make_train_loader(shards, args.batch, teacher_dir=tokens,
                                                     **kw),
        "current pipe:cat": lambda: current.make_train_loader(
            f"pipe:cat {shards}/{{path}}", args.batch, teacher_dir=pipe_tokens, **kw),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="da433ab",
                        help="git revision whose pipeline/shards.py is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = load_baseline(args.baseline, root)
        make_shards(root, args.samples)
        for teacher in (False, True):
            what = "latents + teacher tokens" if teacher else "latents"
            makers = loaders(baseline, root, args, teacher)
            rates: dict[str, list[float]] = {name: [] for name in makers}
            for r in range(args.rounds):
                order = list(makers) if r % 2 == 0 else list(reversed(makers))
                for name in order:
                    rate = steady_rate(makers[name](), args.workers, args.seconds)
                    rates[name].append(rate)
                    print(f"round {r + 1} {what:>24} {name:>16}: {rate:9,.0f} /s "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
            med = {name: statistics.median(v) for name, v in rates.items()}
            print(f"{what}: median of {args.rounds} rounds, {args.workers} workers, batch "
                  f"{args.batch}: " + ", ".join(f"{n} {v:,.0f}/s" for n, v in med.items())
                  + f"; current / baseline = {med['current'] / med['baseline']:.2f}, "
                  f"pipe:cat / baseline = {med['current pipe:cat'] / med['baseline']:.2f}")
        compare_cpu(baseline, root, args)
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
