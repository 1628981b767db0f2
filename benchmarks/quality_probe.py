"""Train one GAT size in-process (no Ray) on the embedded shards, then score its EMA G.

    python benchmarks/quality_probe.py --size GAT-T1/4 --steps 1000 --batch 32 --seed 0
    python benchmarks/quality_probe.py --size GAT-T4/4 --set ema_decay=0.999 \
        --set mapping_lr_factor=1.0 --eval-at 250,500 --grid /tmp/t4.png --log runs.jsonl

What it runs is what a Ray worker of the `train` stage runs (pipeline/training/worker.py): the
library's :class:`gat.train.GATTrainer` fed by ``pipeline.shards.make_train_loader`` with
the REPA teacher tokens of data/teacher, lr from the width-aware rule. Every field of
``gat.train.TrainConfig`` can be overridden with ``--set name=value`` (the defaults are the
library's, then params.yaml's train.* values that share a name, then the overrides).

At the end (and at each ``--eval-at`` step) the EMA generator is scored with
``pipeline.evaluation.evaluate_generator`` against data/reference: FD-classifier (a
stand-in, NOT FID), precision, recall, class accuracy, on ``--samples`` class-balanced
samples. Prints one row per evaluation and, with ``--log``, appends it as JSON.

Deterministic per ``--seed`` at a fixed thread count: model init, z and noise come from
the trainer's seeded RNG, batches from the loader's seeded shuffle, samples from a fixed
evaluation seed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gat.train import GATTrainer, TrainConfig


def load_avg() -> str:
    """The 1/5/15-minute load average (what `uptime` prints), as one string."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def parse_overrides(items: list[str]) -> dict:
    """``["ema_decay=0.999", "adam_betas=(0.0,0.99)"]`` -> typed TrainConfig overrides."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(fields)}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string such as mng=lin
        out[key] = value
    return out


def set_constants(items: list[str]) -> dict:
    """``["gat.models.MODULATION_GAIN=1.0"]``: set module constants (before building)."""
    import importlib

    out = {}
    for item in items:
        path, _, text = item.partition("=")
        module, _, name = path.rpartition(".")
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            raise SystemExit(f"--const {item!r}: {module} has no {name}")
        setattr(mod, name, ast.literal_eval(text))
        out[path] = getattr(mod, name)
    return out


def base_config(use_params: bool) -> dict:
    """TrainConfig fields from params.yaml's train section (same names), if asked."""
    if not use_params:
        return {}
    from pipeline.config import load_params

    train = load_params(None, check_paths=False).to_dict()["train"]
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in train.items() if k in names}


def parse_emas(text: str) -> dict[str, tuple[float, float]]:
    """``"0.9,0.999r0.05"`` -> {label: (decay, rampup)}: extra EMAs of G to score."""
    out = {}
    for item in filter(None, text.split(",")):
        decay, _, rampup = item.partition("r")
        out[f"ema{item}"] = (float(decay), float(rampup or 0.0))
    return out


def evaluate(trainer: GATTrainer, tokenizer, samples: int, raw: bool = False,
             gen=None) -> dict:
    """Scores of the EMA generator (``raw``: of the trained G itself; or of ``gen``)."""
    from pipeline.evaluation import evaluate_generator
    from pipeline.fidelity import evaluator, load_reference

    ev = evaluator("train")
    ref = load_reference(metric=ev.metric)
    t0 = time.perf_counter()
    if gen is None:
        gen = trainer.G if raw else trainer.G_ema
    out = evaluate_generator(ev, gen, tokenizer, ref, samples, batch=250, seed=0)
    out["eval_s"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def save_grid(trainer: GATTrainer, tokenizer, path: str, per_class: int = 10) -> None:
    """EMA samples, one row per class, fixed z (column j: the same z in every row)."""
    from torchvision.utils import save_image

    g = trainer.G_ema
    classes = min(10, g.num_classes)
    z = torch.randn(per_class, 64, generator=torch.Generator().manual_seed(1234))
    z = z.repeat(classes, 1)
    c = torch.arange(classes).repeat_interleave(per_class)
    images = tokenizer.decode(g.sample(z, c).float())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255, path, nrow=per_class, padding=1)


@torch.no_grad()
def latent_spread(trainer: GATTrainer, per_class: int = 64) -> tuple[float, float]:
    """Within-class diversity of EMA latents: per-class std across z, averaged over latent
    pixels and classes, of the latents and of their 4x4 average pools (coarse layout).
    Latent units; real latents of the shards: 0.44 and 0.30 (:func:`real_spread`)."""
    g = trainer.G_ema
    gen = torch.Generator().manual_seed(99)
    latents = []
    for cls in range(g.num_classes):
        z = torch.randn(per_class, 64, generator=gen)
        latents.append(g.sample(z, torch.full((per_class,), cls, dtype=torch.long)).float())
    return _spread(latents)


def _spread(per_class: list[torch.Tensor]) -> tuple[float, float]:
    fine = torch.stack([x.std(0).mean() for x in per_class]).mean()
    coarse = torch.stack([F.avg_pool2d(x, 4).std(0).mean() for x in per_class]).mean()
    return float(fine), float(coarse)


def real_spread(shards, per_class: int = 64) -> tuple[float, float]:
    """:func:`latent_spread` of real latents (the first shuffled batches of the shards)."""
    from pipeline.shards import make_train_loader

    batch = next(iter(make_train_loader(shards, 1024, 0, 1, 0, 0, 2000, None)))
    x, y = batch["latents"], batch["labels"]
    return _spread([x[y == c][:per_class] for c in range(int(y.max()) + 1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="GAT-T1/4")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--d-size", default="",
                        help="D's model if not --size's (train.d_size), e.g. GAT-T3/4")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a TrainConfig field (repeatable)")
    parser.add_argument("--no-params", action="store_true",
                        help="start from the library's TrainConfig defaults, not params.yaml")
    parser.add_argument("--eval-at", default="", help="also evaluate at these steps (1,2,..)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--shuffle-buffer", type=int, default=2000)
    parser.add_argument("--grid", default="", help="write an EMA sample grid PNG here")
    parser.add_argument("--log", default="", help="append result rows as JSON lines here")
    parser.add_argument("--tag", default="", help="a label for the row")
    parser.add_argument("--const", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="set a module constant before building, e.g. "
                             "gat.models.MODULATION_GAIN=1.0 (repeatable)")
    parser.add_argument("--save", default="", help="save the trainer's state_dict here")
    parser.add_argument("--emas", default="",
                        help="extra EMAs of G scored beside the trainer's, DECAY[rRAMPUP],..."
                             " e.g. 0.9,0.999r0.05 (same training run)")
    parser.add_argument("--raw", action="store_true",
                        help="at every evaluation also score the trained G itself (not its EMA)")
    args = parser.parse_args()

    from pipeline.layout import LAYOUT
    from pipeline.pretrained.tokenizer import load_tokenizer
    from pipeline.shards import make_train_loader, read_manifest

    torch.set_num_threads(args.threads)
    consts = set_constants(args.const)
    fields = {**base_config(not args.no_params), **parse_overrides(args.set)}
    cfg = TrainConfig(**fields)
    shards, teacher = LAYOUT.shards, LAYOUT.teacher_tokens
    manifest = read_manifest(shards)
    use_teacher = cfg.repa_weight > 0
    teacher_dim = read_manifest(teacher)["token_shape"][-1] if use_teacher else 1
    trainer = GATTrainer(args.size, manifest["latent_shape"][0], manifest["latent_shape"][-1],
                         manifest["num_classes"], teacher_dim, cfg, "cpu", seed=args.seed,
                         d_name=args.d_size or None)
    torch.manual_seed(args.seed)  # as pipeline/training/worker.py does before its loop
    loader = iter(make_train_loader(shards, args.batch, 0, 1, args.loader_workers, args.seed,
                                    args.shuffle_buffer, teacher if use_teacher else None))
    tokenizer = load_tokenizer("train", scale_factor=manifest["scale_factor"])
    eval_at = {int(s) for s in args.eval_at.split(",") if s}
    changed = {k: v for k, v in dataclasses.asdict(cfg).items()
               if getattr(TrainConfig(), k) != v}
    print(f"{args.size} steps {args.steps} batch {args.batch} seed {args.seed} lr "
          f"{trainer.lr:.4g} threads {torch.get_num_threads()} load {load_avg()}\n"
          f"config (vs library defaults): {changed} {consts or ''}", flush=True)

    header = (f"{'tag':<18} {'size':<9} {'step':>5} {'FD-cls':>7} {'prec':>5} {'rec':>5} "
              f"{'acc':>5} {'spread':>6} {'coarse':>6} {'train_s':>7} {'img/s':>6}  load")
    print(header, flush=True)
    from gat.optim import EMA

    extra = {k: EMA(trainer.G, d, r) for k, (d, r) in parse_emas(args.emas).items()}
    train_s, recent = 0.0, []
    for step in range(1, args.steps + 1):
        batch = next(loader)
        t0 = time.perf_counter()
        metrics = trainer.step(batch["latents"], batch["labels"], batch["teacher"])
        train_s += time.perf_counter() - t0
        for ema in extra.values():
            ema.update(trainer.G, trainer.step_count)
        recent = [*recent, metrics][-50:]
        if step in eval_at or step == args.steps:
            load_end = load_avg()
            rng = torch.get_rng_state()  # evaluation must not shift training's noise stream
            res = evaluate(trainer, tokenizer, args.samples)
            spread, coarse = latent_spread(trainer)
            torch.set_rng_state(rng)
            mean = {k: sum(m[k] for m in recent) / len(recent) for k in recent[-1]}
            row = {"tag": args.tag, "size": args.size, "d_size": args.d_size or args.size,
                   "step": step, "batch": args.batch,
                   "seed": args.seed, "config": changed, "consts": consts, "fd": res["fd"],
                   "precision": res["precision"], "recall": res["recall"],
                   "class_accuracy": res["class_accuracy"], "latent_spread": spread,
                   "coarse_spread": coarse,
                   "train_s": train_s, "images_per_s": step * args.batch / train_s,
                   "load": load_end, "lr": trainer.lr,
                   "last50": {k: round(v, 4) for k, v in mean.items()}}
            print(f"{args.tag:<18} {args.size:<9} {step:>5} {res['fd']:>7.2f} "
                  f"{res['precision']:>5.3f} {res['recall']:>5.3f} "
                  f"{res['class_accuracy']:>5.3f} {spread:>6.3f} {coarse:>6.3f} {train_s:>7.1f} "
                  f"{row['images_per_s']:>6.1f}  {load_end}  (eval {res['eval_s']:.0f} s)",
                  flush=True)
            print("  last 50 steps: " + " ".join(f"{k} {v:.3g}" for k, v in mean.items()),
                  flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps(row) + "\n")
            others = {"raw G": trainer.G} if args.raw else {}
            others.update({k: e.model for k, e in extra.items()})
            for label, gen in others.items():
                res = evaluate(trainer, tokenizer, args.samples, gen=gen)
                torch.set_rng_state(rng)
                print(f"{args.tag + ' ' + label:<18} {args.size:<9} {step:>5} {res['fd']:>7.2f} "
                      f"{res['precision']:>5.3f} {res['recall']:>5.3f} "
                      f"{res['class_accuracy']:>5.3f}", flush=True)
                if args.log:
                    with open(args.log, "a") as f:
                        f.write(json.dumps({**row, "tag": f"{args.tag} {label}", **{
                            k: res[k] for k in ("fd", "precision", "recall",
                                                "class_accuracy")}}) + "\n")
    if args.save:
        torch.save(trainer.state_dict(), args.save)
    if args.grid:
        save_grid(trainer, tokenizer, args.grid)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
