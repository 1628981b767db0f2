"""The command line every stage shares: ``python -m stages.NAME [--params F] [--dry-run]``.

A stage module defines ``run(params, args)`` and ends with ``stage_main(__doc__, run)``;
stages that work per model size declare ``size=True`` and get a positional SIZE argument
and ``--seed`` (a training seed of study.train_seeds, default the first).
``--dry-run`` prints the resolved, validated config and exits before any work. A stage
refused by the cluster or the MLflow store (``ClusterError``, ``TrackingError``) exits with
the message, which names what to set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from pipeline.cluster import ClusterError
from pipeline.config import DEFAULT_PARAMS, Params, ParamsError, load_params
from pipeline.config.trace import untraced
from pipeline.tracking import TrackingError


def stage_parser(doc: str | None, size: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if size:
        parser.add_argument("size", metavar="SIZE",
                            help="model size from study.sizes, e.g. GAT-T1/4")
        parser.add_argument("--seed", type=int, default=None,
                            help="training seed from study.train_seeds (default: the first)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help="params file (default: params.yaml at the repo root)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved, validated config and exit")
    return parser


def _check_size_and_seed(params: Params, args: argparse.Namespace) -> None:
    """SIZE must be in study.sizes, --seed in study.train_seeds (default: the first)."""
    with untraced():  # refusing an unknown SIZE or seed is validation, not a use of them
        sizes, seeds = params.study.sizes, params.study.train_seeds
        if args.size not in sizes:
            raise ParamsError(f"SIZE {args.size!r} is not in study.sizes ({', '.join(sizes)})")
        args.seed = seeds[0] if args.seed is None else args.seed
        if args.seed not in seeds:
            raise ParamsError(f"--seed {args.seed} is not in study.train_seeds ({seeds})")


def stage_main(
    doc: str | None,
    run: Callable[[Params, argparse.Namespace], Any],
    size: bool = False,
    extra: Callable[[Params, argparse.Namespace], dict] | None = None,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    """Parse arguments, validate params (refusing bad input before any work), then run.

    ``extra`` adds derived values (e.g. the width-adapted learning rate) to the dry-run
    print-out; ``configure`` adds stage-specific arguments.
    """
    parser = stage_parser(doc, size)
    if configure:
        configure(parser)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if size:
            _check_size_and_seed(params, args)
    except ParamsError as err:
        sys.exit(f"error: {err}")
    if args.dry_run:
        resolved: dict[str, Any] = params.to_dict()
        if extra:
            resolved["derived"] = extra(params, args)
        print(yaml.safe_dump(json.loads(json.dumps(resolved)), sort_keys=False))
        return
    try:
        run(params, args)
    except (ClusterError, TrackingError) as err:  # refused before any work: say what to set
        sys.exit(f"error: {err}")
