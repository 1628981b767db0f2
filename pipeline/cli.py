"""The ``gat`` command: model facts (``gat info``), sampling (``gat sample``), latent
walks (``gat interpolate``), GANSpace edits (``gat edit``), analyses of trained generators
(``gat analyze``) and params presets (``gat profile``).

``info`` needs only the model library; ``sample``, ``interpolate`` and ``edit`` decode with
the tokenizer (diffusers) and read MLflow references and pipeline folders, ``profile``
validates params: the command lives here, a floor above ``gat/``, and is the pipeline's
one command-line room besides the stages'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from gat.flops import model_facts
from gat.mng import MNG_VARIANTS
from gat.models import GAT_MODELS, model_config
from gat.train import TrainConfig, model_lr

DEFAULTS = TrainConfig()  # the paper's lr_base, tuned at GAT-S (width c_base)


def model_info(name: str, channels: int = 4, size: int = 32, num_classes: int = 1000,
               teacher_dim: int = 768, lr_base: float = DEFAULTS.lr_base,
               c_base: int = DEFAULTS.c_base, d_name: str | None = None) -> dict:
    """Shape, parameter counts, G GFLOPs (one sample, DiT convention), width-aware lr; with
    ``d_name``, D is that size (and has its own lr)."""
    cfg = model_config(name)
    facts = model_facts(name, channels, size, num_classes, teacher_dim, d_name)
    rule = TrainConfig(lr_base=lr_base, c_base=c_base)
    info = {"name": name, "depth": cfg.depth, "width": cfg.width, "heads": cfg.heads,
            "patch": cfg.patch, "latent": [channels, size, size], "num_classes": num_classes,
            "g_params": facts["g_params"], "d_params": facts["d_params"],
            "g_gflops": round(facts["g_gflops"], 4), "lr": model_lr(rule, name)}
    if d_name:
        info.update(d_name=d_name, d_lr=model_lr(rule, d_name))
    return info


def _parse_latent(text: str) -> tuple[int, int]:
    try:
        channels, size = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--latent {text!r}: expected C,SIZE e.g. 4,32") from None
    return channels, size


def _cmd_info(args: argparse.Namespace) -> int:
    channels, size = args.latent
    info = model_info(args.model, channels, size, args.classes, args.teacher_dim,
                      args.lr_base, args.c_base, args.d_model)
    if args.json:
        print(json.dumps(info))
        return 0
    rows = [
        ("model", info["name"]),
        ("layers / width / heads / patch",
         f"{info['depth']} / {info['width']} / {info['heads']} / {info['patch']}"),
        ("latent", "x".join(map(str, info["latent"]))),
        ("G params", f"{info['g_params'] / 1e6:.2f}M"),
        (f"D params{' (' + info['d_name'] + ')' if 'd_name' in info else ''}",
         f"{info['d_params'] / 1e6:.2f}M"),
        ("G GFLOPs (1 sample, MAC=1)", f"{info['g_gflops']:.2f}"),
        (f"lr (base {args.lr_base:g} at width {args.c_base})", f"{info['lr']:.4g}"
         + (f" (D: {info['d_lr']:.4g})" if "d_lr" in info else "")),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ----------------------------------------------------------------------------- sample


def check_out(out: str | os.PathLike) -> Path:
    """``out`` as a Path: a grid file ending in .png, or a folder (no suffix)."""
    out = Path(out)
    if out.suffix and out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: a grid must end in .png; a folder has no suffix")
    return out


def save_images(images: torch.Tensor, out: str | os.PathLike, pairs: list[tuple[int, int]],
                nrow: int) -> list[Path]:
    """uint8 [N, 3, H, W] -> a grid PNG when ``out`` ends in .png (``nrow`` per row), else
    one PNG per sample, ``class{c:04d}_seed{s:06d}.png``, in the folder ``out``."""
    from torchvision.utils import save_image

    from pipeline.images import save_grid

    out = check_out(out)
    if out.suffix.lower() == ".png":
        return [save_grid(images, out, nrow)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, (c, s) in zip(images, pairs):
        path = out / f"class{c:04d}_seed{s:06d}.png"
        save_image(image.float() / 255, path)
        paths.append(path)
    return paths


def resolve_generator(ref: str, tracking_uri: str | None = None) -> Path:
    """A generator directory, or an MLflow reference: ``runs:/RUN_ID`` (its ``generator``
    artifact folder), ``runs:/RUN_ID/PATH`` or any artifact URI MLflow can download.

    ``tracking_uri``: the MLflow store holding the run (default: $MLFLOW_TRACKING_URI).
    """
    if ref.startswith("runs:/") and ref.rstrip("/").count("/") == 1:
        ref = ref.rstrip("/") + "/generator"  # where the training stage logs it
    if "://" not in ref and not ref.startswith("runs:/"):
        return Path(ref)
    import mlflow  # only for MLflow references

    return Path(mlflow.artifacts.download_artifacts(ref, tracking_uri=tracking_uri))


def load_parts(args: argparse.Namespace, device: str) -> tuple:
    """(G, decoder, G's name) of ``--generator``: a generator folder with ``--decoder``, or
    a pipeline folder (``outputs/pipeline/SIZE/seedN``), which carries its own VAE."""
    from pipeline.pretrained.tokenizer import Tokenizer, load_tokenizer

    ref = resolve_generator(args.generator, args.tracking_uri)
    if (ref / "model_index.json").exists():
        from diffusers.utils import logging

        from pipeline.serving.diffusers_pipeline import GATPipeline

        logging.disable_progress_bar()  # one line per command is enough
        pipe = GATPipeline.from_pretrained(ref).to(device)
        scale = args.scale_factor or float(pipe.vae.config.scaling_factor)
        return pipe.generator.net, Tokenizer(pipe.vae, scale, str(ref)), \
            pipe.generator.config.name
    from gat.io import load_generator

    gen, meta = load_generator(ref, device)
    if not args.decoder:
        raise ValueError(f"--decoder: required for {ref} (a generator folder; only a "
                         "pipeline folder carries its VAE)")
    # The scale G was trained with is in its metadata; the decoder's own is a fallback.
    return gen, load_tokenizer(args.decoder, device, args.scale_factor or
                               meta.get("scale_factor", 0.0)), meta["name"]


def _device(args: argparse.Namespace) -> str:
    return "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"


def _refuse(command: str, err: Exception) -> int:
    print(f"gat {command}: error: {err}", file=sys.stderr)
    return 2


def _cmd_sample(args: argparse.Namespace) -> int:
    from gat import sample as gs

    try:
        check_out(args.out)
        gen, tokenizer, _ = load_parts(args, _device(args))
        classes = gs.parse_classes(args.classes, gen.num_classes)
        seeds = gs.parse_seeds(args.seeds)
        gs.check_settings(gen.num_classes, args.psi, args.guidance)
    except (ValueError, FileNotFoundError, OSError) as err:
        return _refuse("sample", err)
    latents, pairs = gs.sample_latents(gen, classes, seeds, args.psi, args.guidance)
    paths = save_images(tokenizer.decode(latents), args.out, pairs, nrow=len(seeds))
    print(f"wrote {len(paths)} file(s) ({len(classes)} classes x {len(seeds)} seeds, psi "
          f"{args.psi:g}, guidance {args.guidance:g}): {paths[0]}"
          f"{' ...' if len(paths) > 1 else ''}")
    return 0


# ----------------------------------------------------------------------------- analyze


def _cmd_analyze(args: argparse.Namespace) -> int:
    from pipeline import analysis as pa

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    try:
        subjects = [pa.Subject(resolve_generator(args.generator, args.tracking_uri),
                               args.label, args.checkpoint, args.mng)]
        if args.compare:
            subjects.append(pa.Subject(resolve_generator(args.compare, args.tracking_uri),
                                       args.compare_label, args.compare_checkpoint,
                                       args.compare_mng))
        for s in subjects:  # before loading anything heavy
            if not s.generator.is_dir():
                raise FileNotFoundError(f"generator folder {s.generator} does not exist; give "
                                        "outputs/train/SIZE/seedN/generator or runs:/RUN_ID")
        parts = pa.load_parts(args.decoder or "train", args.evaluator, args.classifier,
                              None if args.teacher == "none" else args.teacher,
                              args.teacher_input_size, args.shards, args.lpips_vgg,
                              args.lpips_lin, device)
        given = {k: v for k, v in (("samples", args.samples), ("per_class", args.per_class),
                                   ("k", args.k)) if v is not None}  # else analyze's defaults
        summary = pa.analyze(subjects, args.out, parts, seed=args.seed, **given)
    except (ValueError, FileNotFoundError, OSError, IndexError) as err:
        print(f"gat analyze: error: {err}", file=sys.stderr)
        return 2
    for r in summary["generators"]:
        d = r["discriminator"]
        print(f"{r['label']}: {r['samples']} samples ({len(r['classes'])} classes x "
              f"{r['per_class']} z); D: {d.get('skipped') or d['how'] + ' ' + d['path']}; "
              f"D's input levels: MNG {r['mng']} ({r['mng_source']})")
    print(f"Fig. 4b distance: {summary['settings']['distance']}")
    print(f"wrote {Path(args.out) / pa.ANALYSIS_FILE} and its figures")
    return 0


# ----------------------------------------------------------------------------- walks


def _classes(args: argparse.Namespace, gen) -> str:
    """--classes, by default class 0, or all (its one) for an unconditional generator."""
    return args.classes or ("all" if gen.num_classes == 0 else "0")


def _check_png(out: str) -> Path:
    if Path(out).suffix.lower() != ".png":
        raise ValueError(f"--out {out}: the strip is one PNG (a name ending in .png)")
    return Path(out)


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from gat import sample as gs
    from pipeline.serving import walks

    try:
        out = _check_png(args.out)
        if args.video:
            walks.check_animation(args.video)
        gen, tokenizer, _ = load_parts(args, _device(args))
        classes = gs.parse_classes(_classes(args, gen), gen.num_classes)
        seeds = gs.parse_seeds(args.seeds)
        walk = [args.kind, classes, seeds]
        styles = walks.interpolation(gen, *walk, args.frames, args.psi, args.guidance)
        moving = walks.interpolation(gen, *walk, args.video_frames, args.psi,
                                     args.guidance) if args.video else None
    except (ValueError, FileNotFoundError, OSError) as err:
        return _refuse("interpolate", err)
    walks.save_strip(walks.render(gen, tokenizer, styles), out)
    print(f"wrote {out}: {styles.shape[0]} walk(s) in {args.kind} x {args.frames} frames")
    if args.video:
        path = walks.save_animation(walks.render(gen, tokenizer, moving), args.video, args.fps)
        print(f"wrote {path}: {args.video_frames} frames at {args.fps:g} fps")
    return 0


def _cmd_edit(args: argparse.Namespace) -> int:
    from gat import sample as gs
    from gat import walk
    from pipeline.serving import walks

    try:
        out = _check_png(args.out)
        gen, tokenizer, name = load_parts(args, _device(args))
        classes = gs.parse_classes(_classes(args, gen), gen.num_classes)
        seeds = gs.parse_seeds(args.seeds)
        components = gs.parse_seeds(args.components, what="components")
        gs.check_settings(gen.num_classes, args.psi, args.guidance)  # before a long PCA
        if args.directions:
            directions, meta = walk.load_directions(args.directions)
            source = f"loaded {args.directions} (of {meta.get('name', '?')})"
        else:
            pca_classes = gs.parse_classes(args.pca_classes, gen.num_classes)
            directions = walk.pca_directions(gen, args.pca_samples, max(components) + 1,
                                             args.pca_seed, pca_classes)
            saved = Path(args.save_directions or out.with_suffix(".directions.pt"))
            walk.save_directions(saved, directions, {
                "name": name, "generator": str(args.generator), "classes": pca_classes})
            source = (f"PCA of w over {args.pca_samples} samples of classes {args.pca_classes}"
                      f", saved to {saved}")
        styles = walks.edits(gen, directions, components, classes, seeds, args.steps,
                             args.sigma, args.psi, args.guidance)
    except (ValueError, FileNotFoundError, OSError) as err:
        return _refuse("edit", err)
    walks.save_strip(walks.render(gen, tokenizer, styles), out)
    spread = ", ".join(f"{s:.3g}" for s in directions.stdev[components].tolist())
    print(f"directions: {source}\nwrote {out}: components {components} (sigma {spread}) x "
          f"{len(classes)} class(es) x {len(seeds)} seed(s), {args.steps} steps from "
          f"-{args.sigma:g} to +{args.sigma:g} sigma")
    return 0


# ----------------------------------------------------------------------------- profile


def _cmd_profile(args: argparse.Namespace) -> int:
    from pipeline.config import ParamsError, load_params
    from pipeline.config import profiles as pf
    from pipeline.layout import REPO_ROOT

    params_file = Path(args.params)
    if args.list or not args.name:
        current = pf.selected(params_file)
        for name, path in pf.available().items():
            print(f"{'*' if name == current else ' '} {name:<10} {path.relative_to(REPO_ROOT)}")
        if current is None:
            print(f"  ({params_file.name} matches no preset: edited by hand)")
        if not args.list:
            print("\nwrite one to params.yaml with: gat profile NAME  (--help for more)")
        return 0
    check_paths = not args.no_check_paths
    try:
        source = pf.resolve(args.name)
        if args.dry_run:
            # Everything but the dataset folders must hold anywhere; missing folders only
            # matter on the machine that runs it, so the dry run reports them and goes on.
            params = load_params(source, check_paths=False)
            note = "dataset paths not checked"
            if check_paths:
                try:
                    load_params(source, check_paths=True)
                    note = "dataset paths present"
                except ParamsError as err:
                    note = f"not runnable on this machine: {str(err).split(': ', 1)[-1]}"
            resolved = {**params.to_dict(), "derived": pf.derived(params)}
            print(f"# profile {args.name}: {source}\n# valid; {note}")
            print(yaml.safe_dump(json.loads(json.dumps(resolved)), sort_keys=False), end="")
            return 0
        pf.select(args.name, params_file, check_paths=check_paths)
    except ParamsError as err:
        hint = ("" if not check_paths or "does not exist" not in str(err) else
                "\n(a profile for another machine: add --no-check-paths to validate the rest)")
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    print(f"wrote profile {args.name!r} ({source}) to {params_file}")
    workspace = params_file.resolve().parent
    if args.name in pf.LINKED_DVC_CACHE and (workspace / ".dvc").is_dir():
        # The workspace's setting (.dvc/config.local, not committed), made where it matters.
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "cache.type",
                        pf.LINK_TYPES], cwd=workspace, check=True)
        print(f"DVC: cache.type {pf.LINK_TYPES} in .dvc/config.local: outputs are links into "
              "the cache, never copies (docs/CLUSTER.md, 'DVC and MLflow at ImageNet scale')")
    print("next: dvc repro   (or bash scripts/repro.sh)")
    return 0


def _generator_command(sub, name: str, func, summary: str,
                       description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that loads a trained generator (see :func:`_generator_args`)."""
    parser = sub.add_parser(name, help=summary, description=description or summary)
    _generator_args(parser)
    parser.set_defaults(func=func)
    return parser


def _generator_args(parser: argparse.ArgumentParser) -> None:
    """--generator, --tracking-uri, --decoder, --cpu: what loads a trained generator."""
    parser.add_argument("--generator", required=True, help=(
        "a pipeline folder (outputs/pipeline/SIZE/seedN: carries its VAE), a generator "
        "folder (outputs/train/SIZE/seedN/generator), or an MLflow run: runs:/RUN_ID (its "
        "generator artifact) or runs:/RUN_ID/PATH"))
    parser.add_argument("--tracking-uri", help="MLflow store of a runs:/ reference "
                        "(default: $MLFLOW_TRACKING_URI), e.g. sqlite:///mlflow.db")
    parser.add_argument("--decoder", help=(
        "the tokenizer of a generator folder: data/tokenizer (the stage's folder, whatever "
        "its source, a hub id's source.txt included), a save_pretrained folder, or a hub id"))
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")


def _settings_args(parser: argparse.ArgumentParser) -> None:
    """--psi, --guidance, --scale-factor."""
    for flag, default, what in (("--psi", 1.0, "truncation in w (1: none, >= 0)"),
                                ("--guidance", 1.0, "w-space guidance scale (1: none; "
                                 "refused for an unconditional generator)"),
                                ("--scale-factor", 0.0, "latent scale (default: the "
                                 "generator's metadata, else the decoder's)")):
        parser.add_argument(flag, type=float, default=default, help=what)


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
    info.add_argument("--lr-base", type=float, default=DEFAULTS.lr_base)
    info.add_argument("--c-base", type=int, default=DEFAULTS.c_base)
    info.add_argument("--d-model", choices=list(GAT_MODELS), metavar="MODEL", default=None,
                      help="D's size when it differs from G's (G and D scaled apart)")
    info.set_defaults(func=_cmd_info)

    sample = _generator_command(sub, "sample", _cmd_sample, "images from a trained generator")
    sample.add_argument("--classes", default="all", help="comma list, or all (default)")
    sample.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 1,5,9 (default 0-7)")
    _settings_args(sample)
    sample.add_argument("--out", required=True, help=(
        "grid.png (rows: classes, columns: seeds) or a folder (one PNG per sample: "
        "classCCCC_seedSSSSSS.png)"))

    walk = _generator_command(
        sub, "interpolate", _cmd_interpolate,
        "latent walks: a strip PNG and an animation (GIF or WebP)",
        "Walk between samples: slerp in z or lerp in w from seed to seed (one row per class "
        "and pair of consecutive seeds), or between class embeddings at one z, as the "
        "paper's Fig. 1 (one row per seed and pair of consecutive classes).")
    walk.add_argument("--kind", choices=("z", "w", "class"), default="z",
                      help="z: slerp in z; w: lerp in w; class: class embeddings (default z)")
    walk.add_argument("--classes", help=(
        "the class of a z/w walk (comma list: one row each), or the classes a class walk "
        "passes through, e.g. 0,7 (default 0; all for an unconditional generator)"))
    walk.add_argument("--seeds", default="0,1", help=(
        "the seeds a z/w walk passes through (default 0,1), or the z of a class walk"))
    walk.add_argument("--frames", type=int, default=8, help="frames per walk in the strip "
                      "(endpoints included, >= 2; default 8)")
    _settings_args(walk)
    walk.add_argument("--out", required=True, help="the strip, a .png (one walk per row)")
    walk.add_argument("--video", help="also an animation, .mp4 (H.264, through "
                      "imageio-ffmpeg), .gif or .webp; frame t shows every walk's frame t")
    walk.add_argument("--video-frames", type=int, default=48, help="frames of the animation "
                      "(default 48)")
    walk.add_argument("--fps", type=float, default=12.0, help="animation speed (default 12)")

    edit = _generator_command(
        sub, "edit", _cmd_edit, "GANSpace edits: principal directions of w as +-sigma strips",
        "PCA of w = mapping(z, c) over many samples (GANSpace, the paper's Fig. 13); each row "
        "moves one sample along one component from -sigma to +sigma of w's spread along "
        "it. The directions are saved, so they can be applied to any seed later with "
        "--directions.")
    edit.add_argument("--components", default="0-4", help="components to show, 0 = most "
                      "variance (default 0-4)")
    edit.add_argument("--classes", help="class(es) of the edited samples "
                      "(default 0; all for an unconditional generator)")
    edit.add_argument("--seeds", default="0", help="seed(s) of the edited samples (default 0)")
    edit.add_argument("--steps", type=int, default=7, help="columns from -sigma to +sigma "
                      "(odd: the unedited sample in the middle; default 7)")
    edit.add_argument("--sigma", type=float, default=3.0, help="largest move, in standard "
                      "deviations along the component (default 3)")
    _settings_args(edit)
    edit.add_argument("--directions", help="apply directions saved earlier (a .pt file) "
                      "instead of computing them")
    edit.add_argument("--save-directions", help="where to save computed directions "
                      "(default: beside --out, NAME.directions.pt)")
    edit.add_argument("--pca-samples", type=int, default=10_000,
                      help="samples of w for the PCA (default 10000)")
    edit.add_argument("--pca-classes", default="all", help="classes the PCA samples: all "
                      "(default; the top components then mostly change the class), or e.g. "
                      "7 for directions within one class")
    edit.add_argument("--pca-seed", type=int, default=0, help="seed of the PCA's z stream")
    edit.add_argument("--out", required=True, help="the strip, a .png (one row per "
                      "component, class and seed)")

    analyze = sub.add_parser(
        "analyze", help="block analyses of trained generators (paper Figs. 4a, 4b, 6b, 9)",
        description="Per-block analyses of one generator, or two side by side (--compare): "
        "block contributions (Fig. 4b: skip a block, re-synthesise, image distance to the "
        "unablated output), cosine similarity of block input vs output and across z "
        "(Figs. 9a, 9b), PCA of block tokens (Fig. 4a), CKNNA of G and D features with the "
        "teacher on fake and real data (Fig. 6b). Writes OUT/analysis.json and PNGs. The "
        "image distance is LPIPS only with --lpips-vgg and --lpips-lin; otherwise the "
        "evaluator's feature distance, labelled as such (not LPIPS).")
    _generator_args(analyze)
    analyze.add_argument("--compare", help="a second generator (a folder or runs:/), "
                         "analysed with the same z and shown beside the first (e.g. MNG "
                         "exp vs none)")
    analyze.add_argument("--label", default="", help="name in figures (default: its size)")
    analyze.add_argument("--compare-label", default="", help="name of --compare in figures")
    analyze.add_argument("--evaluator", choices=["train", "inception"], default="train",
                         help="features of the Fig. 4b distance without LPIPS: train (the "
                         "FD-classifier) or inception (default train)")
    analyze.add_argument("--classifier", help="FD-classifier folder (default data/classifier)")
    analyze.add_argument("--teacher", default="train", help=(
        "Dinov2Model for CKNNA: train (data/teacher_model), a folder or a hub id; none: no "
        "CKNNA (default train)"))
    analyze.add_argument("--teacher-input-size", type=int, default=0,
                         help="teacher input side (0: its config's, at most 224)")
    for prefix, what in (("", "--generator"), ("compare-", "--compare")):
        analyze.add_argument(f"--{prefix}checkpoint", help=(
            f"D for {what}, for CKNNA: a state.pt, a Ray checkpoint folder or a run folder "
            "(outputs/checkpoints/SIZE/RUN_KEY); default: the run's last Ray checkpoint "
            "(found by G's run key); none: no D"))
        analyze.add_argument(f"--{prefix}mng", choices=list(MNG_VARIANTS), help=(
            f"MNG variant {what} was trained with: how D's input levels are made (default: "
            "G's metadata, else exp)"))
    analyze.add_argument("--shards", help="latent shards of real data for D (default "
                         "data/shards/train when present; else D on real data is skipped)")
    analyze.add_argument("--samples", type=int, help=(
        "samples per generator: --per-class z for each of samples/per-class classes "
        "(default 640)"))
    analyze.add_argument("--per-class", type=int,
                         help="z per class (default 64, the paper's Fig. 9)")
    analyze.add_argument("--seed", type=int, default=0, help="seed of z, D's noise, reals")
    analyze.add_argument("--k", type=int, help="neighbours for CKNNA (default 10)")
    analyze.add_argument("--lpips-vgg", help="torchvision VGG16 weights file "
                         "(vgg16-397923af.pth): with --lpips-lin, Fig. 4b uses LPIPS")
    analyze.add_argument("--lpips-lin", help="the lpips package's linear-layer weights "
                         "(weights/v0.1/vgg.pth)")
    analyze.add_argument("--out", required=True, help="output folder")
    analyze.set_defaults(func=_cmd_analyze)

    from pipeline.config import DEFAULT_PARAMS

    profile = sub.add_parser(
        "profile", help="write a preset (profiles/NAME.yaml) to params.yaml",
        description="Validate a preset from profiles/ (embedded, paper, tiny, or any params "
                    "file) and write it to params.yaml, the one file every stage reads.")
    profile.add_argument("name", nargs="?", metavar="NAME",
                         help="preset name from profiles/ (embedded, paper, tiny) or a file")
    profile.add_argument("--dry-run", action="store_true",
                         help="validate and print the resolved config; leave params.yaml "
                              "alone (missing dataset folders are reported, not fatal)")
    profile.add_argument("--no-check-paths", action="store_true",
                         help="skip checks that need this machine (dataset folders exist)")
    profile.add_argument("--list", action="store_true", help="list presets and exit")
    profile.add_argument("--params", default=str(DEFAULT_PARAMS), help=argparse.SUPPRESS)
    profile.set_defaults(func=_cmd_profile)
    return parser


def checkout_here(cwd: Path | None = None) -> Path | None:
    """The project checkout the working directory is in (the nearest folder up holding
    dvc.yaml and pipeline/layout.py), or None."""
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "pipeline" / "layout.py").is_file():
            return folder
    return None


def main(argv: list[str] | None = None) -> int:
    if argv is None and "GAT_ROOT" not in os.environ:
        # The `gat` command acts on the checkout it is run in, as git and dvc do, not on the
        # one its venv installed it from (where `gat profile` would write params.yaml).
        # Set before anything reads pipeline.layout's REPO_ROOT; in-process calls with
        # argv (the tests) keep theirs.
        here = checkout_here()
        if here is not None:
            os.environ["GAT_ROOT"] = str(here)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
