"""Select a params profile: validate ``profiles/NAME.yaml`` and make it ``params.yaml``.

    python -m pipeline.profile --list          # the profiles, and which one is selected
    python -m pipeline.profile paper --dry-run # validate and print the resolved config
    python -m pipeline.profile paper           # validate, then copy to params.yaml
    python -m pipeline.profile embedded        # back to the embedded default

Profiles: ``embedded`` (the default: Fashion-MNIST ladder on a CPU), ``paper`` (the
paper's ImageNet 256 study on a GPU cluster), ``tiny`` (the CI end-to-end test). NAME may
also be the path of any params file. The file is validated exactly as every stage
validates ``params.yaml``, so a bad profile is refused before it replaces anything; the
copy is atomic (comments kept). Dataset folders are checked unless ``--no-check-paths``
is given (a profile meant for another machine, e.g. ``paper`` validated on a laptop).
Then run the study with ``dvc repro`` (see docs/PROFILES.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.files import atomic_path
from pipeline.params import DEFAULT_PARAMS, REPO_ROOT, Params, ParamsError, load_params

PROFILES_DIR = REPO_ROOT / "profiles"


def available() -> dict[str, Path]:
    """Profile name -> file, for every ``profiles/*.yaml``."""
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"))}


def resolve(name: str) -> Path:
    """A profile name (``paper``) or the path of a params file -> that file.

    Raises :class:`ParamsError` naming the known profiles when neither exists.
    """
    profiles = available()
    if name in profiles:
        return profiles[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise ParamsError(
        f"profile {name!r}: no such profile. Allowed: {', '.join(profiles) or '(none)'}, "
        "or the path of a params .yaml file"
    )


def selected(params_file: Path = DEFAULT_PARAMS) -> str | None:
    """The name of the profile whose file is byte-identical to ``params_file``, if any."""
    if not params_file.is_file():
        return None
    current = params_file.read_bytes()
    for name, path in available().items():
        if path.read_bytes() == current:
            return name
    return None


def derived(params: Params) -> dict[str, Any]:
    """What the config implies, for the dry run: per-size width, depth and learning rate."""
    from gat.models import model_config
    from gat.optim import width_aware_lr

    train = params.train
    sizes = {}
    for name in params.study.sizes:
        cfg = model_config(name)
        sizes[name] = {
            "depth": cfg.depth,
            "width": cfg.width,
            "heads": cfg.heads,
            "lr": float(f"{width_aware_lr(train.lr_base, train.c_base, cfg.width):.4g}"),
        }
    per_worker = train.batch // (train.workers * train.grad_accum)
    return {
        "sizes": sizes,
        "batch_per_worker_step": per_worker,
        "images_seen": train.batch * train.iterations if train.kimg <= 0 else train.kimg * 1000,
        "metric": "FID (Inception)" if params.evaluator.source == "inception"
        else "FD-classifier (stand-in, not FID)",
    }


def select(name: str, params_file: Path = DEFAULT_PARAMS, check_paths: bool = True) -> Path:
    """Validate profile ``name`` and copy it onto ``params_file`` atomically; return its path."""
    source = resolve(name)
    load_params(source, check_paths=check_paths)
    data = source.read_bytes()
    with atomic_path(params_file) as tmp:
        tmp.write_bytes(data)
    return source


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.profile", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="profile name from profiles/ (embedded, paper, tiny) or a file")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print the resolved config; leave params.yaml "
                        "alone (missing dataset folders are reported, not fatal)")
    parser.add_argument("--no-check-paths", action="store_true",
                        help="skip checks that need this machine (dataset folders exist)")
    parser.add_argument("--list", action="store_true", help="list profiles and exit")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    params_file = Path(args.params)
    if args.list or not args.name:
        current = selected(params_file)
        for name, path in available().items():
            mark = "*" if name == current else " "
            print(f"{mark} {name:<10} {path.relative_to(REPO_ROOT)}")
        if current is None:
            print(f"  ({params_file.name} matches no profile: edited by hand)")
        if not args.list:
            print("\nselect one with: python -m pipeline.profile NAME  (--help for more)")
        return 0
    check_paths = not args.no_check_paths
    try:
        source = resolve(args.name)
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
            resolved: dict[str, Any] = params.to_dict()
            resolved["derived"] = derived(params)
            print(f"# profile {args.name}: {source}\n# valid; {note}")
            print(yaml.safe_dump(json.loads(json.dumps(resolved)), sort_keys=False), end="")
            return 0
        select(args.name, params_file, check_paths=check_paths)
    except ParamsError as err:
        hint = ("" if not check_paths or "does not exist" not in str(err) else
                "\n(a profile for another machine: add --no-check-paths to validate the rest)")
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    print(f"selected profile {args.name!r}: {source} -> {params_file}")
    print("next: dvc repro   (or bash scripts/repro.sh)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
