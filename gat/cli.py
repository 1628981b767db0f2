"""The ``gat`` command: model facts (``gat info``) and sampling (``gat sample``)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from gat.flops import generator_gflops
from gat.models import GAT_MODELS, build_models, count_params
from gat.optim import width_aware_lr

DEFAULT_LR_BASE, DEFAULT_C_BASE = 4e-4, 384  # the paper's: tuned at GAT-S


def model_info(
    name: str, channels: int = 4, size: int = 32, num_classes: int = 1000,
    teacher_dim: int = 768, lr_base: float = DEFAULT_LR_BASE, c_base: int = DEFAULT_C_BASE,
) -> dict:
    """Parameter counts, G GFLOPs (one sample, DiT convention) and the width-aware lr."""
    with torch.device("meta"):
        gen, disc = build_models(name, channels, size, num_classes, teacher_dim)
    g_params, d_params = count_params(gen), count_params(disc)
    gflops = generator_gflops(gen)  # shapes are all FlopCounterMode needs: meta is enough
    cfg = gen.cfg
    return {
        "name": name, "depth": cfg.depth, "width": cfg.width, "heads": cfg.heads,
        "patch": cfg.patch, "latent": [channels, size, size], "num_classes": num_classes,
        "g_params": g_params, "d_params": d_params, "g_gflops": round(gflops, 4),
        "lr": width_aware_lr(lr_base, c_base, cfg.width),
    }


def _parse_latent(text: str) -> tuple[int, int]:
    try:
        channels, size = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--latent {text!r}: expected C,SIZE e.g. 4,32") from None
    return channels, size


def _cmd_info(args: argparse.Namespace) -> int:
    channels, size = args.latent
    info = model_info(args.model, channels, size, args.classes, args.teacher_dim,
                      args.lr_base, args.c_base)
    if args.json:
        print(json.dumps(info))
        return 0
    rows = [
        ("model", info["name"]),
        ("layers / width / heads / patch",
         f"{info['depth']} / {info['width']} / {info['heads']} / {info['patch']}"),
        ("latent", "x".join(map(str, info["latent"]))),
        ("G params", f"{info['g_params'] / 1e6:.2f}M"),
        ("D params", f"{info['d_params'] / 1e6:.2f}M"),
        ("G GFLOPs (1 sample, MAC=1)", f"{info['g_gflops']:.2f}"),
        (f"lr (base {args.lr_base:g} at width {args.c_base})", f"{info['lr']:.4g}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from gat import sample as gs
    from gat.io import load_generator

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    try:
        gs.check_out(args.out)
        gen, meta = load_generator(gs.resolve_generator(args.generator, args.tracking_uri),
                                   device)
        classes = gs.parse_classes(args.classes, gen.num_classes)
        seeds = gs.parse_seeds(args.seeds)
        vae = gs.load_decoder(args.decoder, device)
    except (ValueError, FileNotFoundError) as err:
        print(f"gat sample: error: {err}", file=sys.stderr)
        return 2
    # The scale G was trained with is in its metadata; the decoder's own is a fallback.
    scale = (args.scale_factor or meta.get("scale_factor")
             or gs.decoder_scale_factor(args.decoder, vae))
    latents, pairs = gs.sample_latents(gen, classes, seeds, args.psi, args.guidance)
    images = gs.decode(latents, vae, scale)
    paths = gs.save_images(images, args.out, pairs, nrow=len(seeds))
    print(f"wrote {len(paths)} file(s) ({len(classes)} classes x {len(seeds)} seeds, psi "
          f"{args.psi:g}, guidance {args.guidance:g}): {paths[0]}"
          f"{' ...' if len(paths) > 1 else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameter counts, GFLOPs and learning rate of a model")
    info.add_argument("model", choices=list(GAT_MODELS), metavar="MODEL",
                      help=f"model name, one of: {', '.join(GAT_MODELS)}")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--latent", type=_parse_latent, default=(4, 32), metavar="C,SIZE",
                      help="latent channels and side (default 4,32: SD-VAE at 256px)")
    info.add_argument("--classes", type=int, default=1000, help="number of classes")
    info.add_argument("--teacher-dim", type=int, default=768, help="REPA teacher width")
    info.add_argument("--lr-base", type=float, default=DEFAULT_LR_BASE)
    info.add_argument("--c-base", type=int, default=DEFAULT_C_BASE)
    info.set_defaults(func=_cmd_info)

    sample = sub.add_parser("sample", help="images from a trained generator")
    sample.add_argument("--generator", required=True,
                        help="generator dir (outputs/train/SIZE/generator), or an MLflow "
                             "run: runs:/RUN_ID (its generator artifact) or runs:/RUN_ID/PATH")
    sample.add_argument("--tracking-uri", default=None,
                        help="MLflow store of a runs:/ reference (default: "
                             "$MLFLOW_TRACKING_URI), e.g. sqlite:///mlflow.db")
    sample.add_argument("--decoder", required=True,
                        help="tokenizer (AutoencoderKL) dir, e.g. data/tokenizer")
    sample.add_argument("--classes", default="all", help="comma list, or all (default)")
    sample.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 1,5,9 (default 0-7)")
    sample.add_argument("--psi", type=float, default=1.0, help="truncation in w (1: none)")
    sample.add_argument("--guidance", type=float, default=1.0, help="w-space guidance scale")
    sample.add_argument("--scale-factor", type=float, default=0.0,
                        help="latent scale (default: the generator's metadata, else the "
                             "decoder's)")
    sample.add_argument("--out", required=True,
                        help="grid.png (rows: classes, columns: seeds) or a folder (one PNG "
                             "per sample: classCCCC_seedSSSSSS.png)")
    sample.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    sample.set_defaults(func=_cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
