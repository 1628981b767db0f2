"""The pipeline's figures: files only (Agg), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in DVC runs
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.files import atomic_path

if TYPE_CHECKING:
    from pipeline.scaling import PowerLaw


def note_plot(text: str, path: Path) -> None:
    """A figure that says why the figure is missing (outputs always exist)."""
    fig, ax = plt.subplots(figsize=(5, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    save(fig, path, dpi=100)


def save(fig, path: Path, dpi: int = 130) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def scaling_plot(table: pd.DataFrame, law: PowerLaw, label: str, path: Path,
                 floors: dict[str, float] | None = None, runs: pd.DataFrame | None = None
                 ) -> None:
    """Log-log: the sizes (seeds' means, their range as error bars, every seed's point from
    ``runs`` when there are several), the fitted law and its 95% bootstrap band; ``floors``
    (name -> FD, e.g. real and tokenizer-reconstructed images) as horizontal lines."""
    xs = np.geomspace(table["g_gflops"].min() / 1.25, table["g_gflops"].max() * 1.25, 100)
    lo, hi = law.band(xs)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.fill_between(xs, lo, hi, alpha=0.2, label="95% bootstrap band")
    ax.plot(xs, law(xs), "-", label=f"{label} = {law.a:.3g} * GFLOPs^{law.b:.3f}")
    several = "seeds" in table and table["seeds"].max() > 1
    if several and runs is not None:
        ax.scatter(runs["g_gflops"], runs["fd"], s=10, color="0.5", zorder=2, label="seeds")
    if several:
        ax.errorbar(table["g_gflops"], table["fd"], fmt="none", ecolor="k", capsize=3,
                    yerr=[table["fd"] - table["fd_min"], table["fd_max"] - table["fd"]])
    ax.scatter(table["g_gflops"], table["fd"], zorder=3, color="k",
               label="sizes (mean of seeds)" if several else "sizes")
    for i, (name, fd) in enumerate((floors or {}).items()):
        ax.axhline(fd, color=f"C{i + 1}", linestyle="--", linewidth=1, label=f"{name}: {fd:.3g}")
    for _, row in table.iterrows():
        ax.annotate(row["size"], (row["g_gflops"], row["fd"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="G forward GFLOPs (one sample, multiply-add = 1)",
           ylabel=label, title=f"{label} vs compute (Pearson r = {law.pearson_r:.2f})")
    ax.legend(fontsize=8)
    save(fig, path)


def sweep_plot(table: pd.DataFrame, label: str, size: str, path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    done = table[~table["stopped_early"]]
    stopped = table[table["stopped_early"]]
    ax.plot(done["lr_base"], done["fd"], "o-", label="ran to the end")
    ax.plot(stopped["lr_base"], stopped["fd"], "x", color="C3", label="stopped by ASHA")
    ax.set_xscale("log")
    ax.set_xlabel("lr_base")
    ax.set_ylabel(f"{label} (last report)")
    ax.set_title(f"lr sweep at {size}")
    ax.legend()
    save(fig, path, dpi=120)


def transfer_plot(table: pd.DataFrame, label: str, path) -> None:
    """The transfer check: one bar per (size, how), its lr written on it."""
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(table), 3.8))
    colors = {size: f"C{i}" for i, size in enumerate(dict.fromkeys(table["size"]))}
    ax.bar(range(len(table)), table["fd"], color=[colors[s] for s in table["size"]])
    for i, lr in enumerate(table["lr"]):
        ax.text(i, 0, f"lr {lr:.2g}", ha="center", va="bottom", color="white", fontsize=8)
    ax.set_xticks(range(len(table)), [f"{s}\n{h}" for s, h in zip(table["size"], table["how"])],
                  fontsize=7)
    ax.set_ylabel(label)
    ax.set_title("lr transfer across sizes (paper Fig. 5b)")
    save(fig, path, dpi=120)


def claim_plot(summary: dict, rows: list[dict], path: Path) -> None:
    """One bar per variant (seeds' mean FD, 95% interval), every seed's FD as a dot; a
    variant whose seeds all diverged is marked instead of drawn. Title: the verdict."""
    variants = summary["variants"]
    fig, ax = plt.subplots(figsize=(1.3 + 1.2 * len(variants), 3.6))
    finite = [r["fd"] for r in rows if isinstance(r["fd"], float) and np.isfinite(r["fd"])]
    top = max(finite, default=1.0) * 1.15
    for i, v in enumerate(variants):
        if v["mean"] == "diverged":
            ax.text(i, top * 0.5, "diverged", ha="center", rotation=90, color="C3")
            continue
        low = v["low"] if isinstance(v["low"], float) else v["mean"]
        high = v["high"] if isinstance(v["high"], float) else top
        ax.bar(i, v["mean"], color="C0", alpha=0.6)
        ax.errorbar(i, v["mean"], yerr=[[v["mean"] - low], [high - v["mean"]]], color="k",
                    capsize=4)
        seeds = [r["fd"] for r in rows if r["variant"] == v["variant"]]
        ax.scatter([i] * len(seeds), [min(f, top) for f in seeds], s=12, color="k", zorder=3)
    ax.set_xticks(range(len(variants)), [v["label"] for v in variants], rotation=20,
                  ha="right", fontsize=8)
    ax.set_ylim(0, top)
    ax.set_ylabel(summary["metric"])
    ax.set_title(f"{summary['figure']}: {summary['verdict']}", fontsize=9)
    save(fig, path, dpi=120)


def compute_plot(traj: pd.DataFrame, final: pd.DataFrame, law: PowerLaw, label: str,
                 path: Path) -> None:
    """The paper's Fig. 21: every size's FD trajectory against the training compute spent
    (log-log), the final points, and FD = a * C^b fitted on them."""
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    for i, (size, runs) in enumerate(traj.groupby("size", sort=False)):
        for j, (_, run) in enumerate(runs.groupby("seed")):
            run = run.sort_values("step")
            ax.plot(run["compute_gflops"], run["fd"], "-", color=f"C{i}", alpha=0.6,
                    label=size if j == 0 else None)
    xs = np.geomspace(final["compute_gflops"].min() / 1.3, final["compute_gflops"].max() * 1.3)
    lo, hi = law.band(xs)
    ax.fill_between(xs, lo, hi, color="k", alpha=0.1)
    ax.plot(xs, law(xs), "k--", label=f"{label} = {law.a:.3g} * C^{law.b:.3f}")
    ax.scatter(final["compute_gflops"], final["fd"], color="k", zorder=3, s=20)
    ax.set(xscale="log", yscale="log", xlabel="training compute C (GFLOPs, counted)",
           ylabel=label, title="FD vs training compute (paper Fig. 21: FID = 3.52e5 C^-0.456)")
    ax.legend(fontsize=7)
    save(fig, path)
