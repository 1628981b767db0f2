"""Report: every claim of the paper this study checked, with its verdict, on one page.

    python -m stages.report

Reads results/scaling/ (Fig. 3c and the compute law of Fig. 21) and results/claims/<NAME>/
of every claim in claims.run. Writes results/report/: report.md (the table: claim, the
paper's figure and numbers, ours with 95% intervals, verdict; one section per claim),
verdicts.json (each claim's verdict and its comparisons', a DVC metric: `dvc exp show`)
and the figures it shows, and logs them to the ladder's MLflow study run.
"""

from __future__ import annotations

import argparse
import shutil

from pipeline import tracking
from pipeline.config import Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.report import BLOCKS, read, render, verdicts
from pipeline.stage import stage_main


def run(params: Params, args: argparse.Namespace) -> None:
    scaling = read(LAYOUT.scaling / "metrics.json")
    claims = [(summary, f"{name}.png") for name in params.claims.run
              if (summary := read(LAYOUT.claims / name / "summary.json"))]
    with atomic_path(LAYOUT.report) as tmp:
        tmp.mkdir()
        (tmp / "report.md").write_text(render(scaling, claims))
        write_json(tmp / "verdicts.json", verdicts(claims))
        figures = {n: LAYOUT.scaling / n for n in ("scaling.png", "compute.png")}
        figures.update({plot: LAYOUT.claims / s["claim"] / plot for s, plot in claims})
        figures[BLOCKS] = LAYOUT.claims / "mng" / "analysis" / "contributions.png"
        for name, figure in figures.items():
            if figure.exists():
                shutil.copy(figure, tmp / name)
    log_report(params)
    print(f"report: {len(claims)} claim(s) and the ladder -> {LAYOUT.report / 'report.md'}")


def log_report(params: Params) -> None:
    """The report's files into the ladder's study run (its study key: scaling.csv)."""
    import pandas as pd

    csv = LAYOUT.scaling / "scaling.csv"
    if not csv.exists():
        return
    keys = set(pd.read_csv(csv, dtype={"study_key": str})["study_key"])
    if len(keys) != 1:
        return
    tr = tracking.tracker(params)
    tr.log_artifacts(tracking.study_run(tr, params, keys.pop()), LAYOUT.report, "report")


if __name__ == "__main__":
    stage_main(__doc__, run)
