"""The study's report: the paper's claims next to ours, as one markdown page.

Rows: the scaling ladder (Fig. 3c: FD against G's GFLOPs, and Fig. 21: FD against the
training compute), every claim of claims.run (its variants' means with 95% intervals,
the paper's numbers where it gives them, and the verdict), and the seeds' spread (A.17).
Our distance is the study's metric (FD-classifier offline: not FID); the paper's are
FID-5K or FID-50K on ImageNet. Compare orders and verdicts, never values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PAPER_LADDER = "FID-50K at 50K iterations: S/2 15.24, B/2 9.53, L/2 4.60, XL/2 4.02"
BLOCKS = "mng_block_contributions.png"  # Fig. 4b of MNG exp vs none, in the mng section


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return "—" if value is None else str(value)


def _interval(v: dict[str, Any]) -> str:
    if v["mean"] == "diverged":
        return f"diverged ({v['diverged']}/{v['seeds']} seeds)"
    if v["seeds"] == 1:
        return f"{_fmt(v['mean'])} (1 seed)"
    high = "∞" if v["high"] == "diverged" else _fmt(v["high"])
    return f"{_fmt(v['mean'])} [{_fmt(v['low'])}, {high}] ({v['seeds']} seeds)"


def ladder_rows(scaling: dict[str, Any]) -> list[str]:
    """Markdown table rows for Fig. 3c and Fig. 21 from results/scaling/metrics.json."""
    rows = [f"| Fig. 3c | {scaling['metric']} falls with G's GFLOPs (Pearson r -0.95) | "
            f"{PAPER_LADDER}; r = -0.95 | b = {_fmt(scaling['b'])} "
            f"[{_fmt(scaling['b_ci_low'])}, {_fmt(scaling['b_ci_high'])}], "
            f"r = {_fmt(scaling['pearson_r'], 2)} over {scaling['sizes']} sizes | "
            f"{'holds' if scaling['b_ci_high'] < 0 else 'inconclusive (b interval reaches 0)'} |"]
    if "compute_b" in scaling:
        held = "holds" if scaling["compute_b_ci_high"] < 0 else "inconclusive"
        rows.append(
            f"| Fig. 21, Eq. 21 | FD = a C^b over training compute C | FID-50K = 3.52e5 "
            f"C^-0.456 | {scaling['compute_metric']} = {_fmt(scaling['compute_a'])} C^"
            f"{_fmt(scaling['compute_b'])} (b [{_fmt(scaling['compute_b_ci_low'])}, "
            f"{_fmt(scaling['compute_b_ci_high'])}]) | {held} |")
    else:
        rows.append("| Fig. 21, Eq. 21 | FD = a C^b over training compute C | FID-50K = "
                    "3.52e5 C^-0.456 | not recorded (runtime.fd_every is 0) | — |")
    return rows


def claim_section(summary: dict[str, Any], plot: str) -> str:
    """One claim: its statement, verdict, variants table and plot."""
    lines = [f"### {summary['figure']}: {summary['statement']}", "",
             f"**Verdict: {summary['verdict']}**", "",
             "| comparison (paper: left is better) | FD(right) - FD(left), mean [95% "
             "paired interval] | seeds | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['better']} < {c['worse']} | {_difference(c)} | {c.get('seeds', '')} | "
              f"{c['verdict']} |" for c in summary["comparisons"]]
    lines += ["",
             f"| variant | ours: {summary['metric']}, mean [95% interval] | paper"
             + (f" ({summary['paper_metric']})" if summary["paper_metric"] else "") + " |",
             "|---|---|---|"]
    lines += [f"| {v['label']} | {_interval(v)} | {_fmt(v['paper'], 4)} |"
              for v in summary["variants"]]
    lines += ["", f"![{summary['claim']}]({plot})", ""]
    if summary["claim"] == "mng":
        lines += ["Each block's contribution (paper Fig. 4b: the distance of G's output with "
                  "that block skipped to the full output), MNG exp vs none:", "",
                  f"![block contributions]({BLOCKS})", ""]
    return "\n".join(lines)


def _difference(comparison: dict[str, Any]) -> str:
    """The paired difference with its interval, or what there is of it."""
    if comparison.get("low") is None:
        d = comparison.get("difference")
        return "—" if d is None else _fmt(d, 3)
    return (f"{_fmt(comparison['difference'], 3)} [{_fmt(comparison['low'], 3)}, "
            f"{_fmt(comparison['high'], 3)}]")


def render(scaling: dict[str, Any] | None, claims: list[tuple[dict[str, Any], str]]) -> str:
    """The whole page. ``claims``: (summary.json contents, plot path relative to the page)."""
    out = ["# GAT: the paper's claims, rerun", "",
           "Our distances are the study's metric (FD-classifier offline: a stand-in, **not "
           "FID**); the paper's are FID on ImageNet 256. Compare orders and verdicts, not "
           "values. Verdicts: the 95% Student t interval of the per-seed paired difference "
           "(both variants trained and scored with the same random numbers per seed) must "
           "exclude 0; variants' own intervals: 95% Student t over seeds.", "",
           "| claim | what | paper | ours | verdict |", "|---|---|---|---|---|"]
    out += ladder_rows(scaling) if scaling else ["| Fig. 3c | — | — | scaling not run | — |"]
    out += [f"| {s['figure']} | {s['statement']} | see below | see below | {s['verdict']} |"
            for s, _ in claims]
    out += ["", "![scaling](scaling.png) ![compute](compute.png)", ""]
    out += [claim_section(summary, plot) for summary, plot in claims]
    return "\n".join(out) + "\n"


def verdicts(claims: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """The claims' verdicts as DVC metrics (``results/report/verdicts.json``, declared at
    dvc.yaml's top level): ``{claim: {verdict, "better < worse": verdict, ...}}``, so that
    ``dvc exp show`` and ``dvc metrics diff`` put them side by side across experiments."""
    return {s["claim"]: {"verdict": s["verdict"],
                         **{f"{c['better']} < {c['worse']}": c["verdict"]
                            for c in s["comparisons"]}}
            for s, _ in claims}


def read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None
