"""One of the paper's claims, trained, evaluated and judged.

    python -m stages.claim mng        # mng | repa | lr_transfer | g_vs_d | patch

Every variant of the claim (pipeline/claims.py) trains under every seed of claims.seeds
for claims.iterations steps, through the train stage's own code, runtime.concurrent_runs
at a time: a configuration trained before (by another claim, or the ladder) resumes
finished instead of training again. Each is evaluated like the ladder (evaluate.*, against
data/reference) and logged to its training run's MLflow run. Writes
results/claims/<NAME>/: runs.csv (one row per variant and seed), summary.json (per variant
the seeds' mean FD with its 95% interval, the paper's number where it gives one, and the
verdict of each comparison and of the claim: holds, reversed, or inconclusive) and
<NAME>.png; for mng also analysis/ (the block analyses of MNG exp vs none, first seed:
Figs. 4a, 4b, 6b, 9). To resume after a kill, run the same command again.
"""

from __future__ import annotations

import argparse

import pandas as pd

from pipeline import claims as cl
from pipeline.config import CLAIM_NAMES, Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.plots import claim_plot
from pipeline.stage import stage_main


def run(params: Params, args: argparse.Namespace) -> None:
    claim = cl.claims(params)[args.name]
    rows = cl.run_variants(params, claim)
    summary = cl.summarize(claim, rows)
    out = LAYOUT.claims / claim.name
    with atomic_path(out / "runs.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    write_json(out / "summary.json", summary)
    claim_plot(summary, rows, out / f"{claim.name}.png")
    if claim.name == "mng":  # where the paper tests its claim about inactive early blocks
        cl.analyze_mng(params)
    print(f"{claim.figure}, {claim.statement}: {summary['verdict']}")
    for c in summary["comparisons"]:
        print(f"  {c['better']} < {c['worse']}: {c['verdict']}")


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=CLAIM_NAMES, metavar="NAME",
                        help=f"the claim: {', '.join(CLAIM_NAMES)}")


if __name__ == "__main__":
    stage_main(__doc__, run, configure=_name)
