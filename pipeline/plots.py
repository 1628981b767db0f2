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


# ----------------------------------------------------------------------------- analyses
# ``results``: the per-generator dicts of pipeline.analysis (analysis.json's "generators").


def _contribution_axes(ax, results: list[dict]) -> None:
    """Fig. 4b: grouped bars, one group per block (1-based), one bar per generator."""
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        c = r["contribution"]
        x = np.arange(1, len(c["mean"]) + 1) + (i - (len(results) - 1) / 2) * width
        ax.bar(x, c["mean"], width, yerr=c["std"], capsize=2, label=r["label"],
               color=f"C{i}", error_kw={"elinewidth": 0.8, "alpha": 0.6})
    _block_ticks(ax, max(r["depth"] for r in results))
    ax.set(xlabel="skipped block", ylabel=results[0]["contribution"]["distance"],
           title="block contribution (Fig. 4b)")


def _curve(ax, values: dict, color: str, label: str) -> None:
    """A per-block curve, 1-based, with +-1 std (``values``: {"mean", "std"})."""
    mean, std = np.asarray(values["mean"]), np.asarray(values["std"])
    x = np.arange(1, len(mean) + 1)
    ax.plot(x, mean, "o-", color=color, label=label)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)


def _block_ticks(ax, depth: int) -> None:
    """Blocks are whole numbers, 1-based."""
    ax.set_xticks(range(1, depth + 1))


def _curve_axes(ax, results: list[dict], key: str, title: str, ylabel: str) -> None:
    for i, r in enumerate(results):
        _curve(ax, r[key], f"C{i}", r["label"])
    _block_ticks(ax, max(r["depth"] for r in results))
    ax.set(xlabel="block", ylabel=ylabel, title=title)


def _cknna_axes(ax, results: list[dict]) -> None:
    """Fig. 6b: CKNNA per block vs the teacher: G on fakes, D on fakes and on reals."""
    styles = {"g_fake": ("o-", "G, fake"), "d_fake": ("s--", "D, fake"),
              "d_real": ("^:", "D, real")}
    for i, r in enumerate(results):
        for key, (fmt, what) in styles.items():
            values = r["cknna"].get(key)
            if values:
                y = [np.nan if v is None else v for v in values]
                ax.plot(np.arange(1, len(y) + 1), y, fmt, color=f"C{i}",
                        label=f"{r['label']}: {what}")
    _block_ticks(ax, max(max(len(r["cknna"].get(key) or []) for key in styles)
                         for r in results))
    k = results[0]["cknna"]["k"]
    ax.set(xlabel="block", ylabel=f"CKNNA (k={k}) with the teacher",
           title="alignment with the teacher (Fig. 6b)")


def _one_axes_plot(draw, results: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    draw(ax, results)
    ax.legend(fontsize=7)
    save(fig, path)


def contribution_plot(results: list[dict], path: Path) -> None:
    _one_axes_plot(_contribution_axes, results, path)


def similarity_plot(results: list[dict], path: Path) -> None:
    """Figs. 9a and 9b side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    _curve_axes(axes[0], results, "io_cosine", "block input vs output (Fig. 9a)",
                "cosine similarity")
    _curve_axes(axes[1], results, "cross_z_cosine", "different z, same class (Fig. 9b)", "")
    axes[0].legend(fontsize=8)
    save(fig, path)


def cknna_plot(results: list[dict], path: Path) -> None:
    _one_axes_plot(_cknna_axes, results, path)


def compare_plot(results: list[dict], path: Path) -> None:
    """Generators side by side, one column each, shared y per row: block contributions,
    the two cosine similarities, and CKNNA when measured."""
    rows = 3 if all(r["cknna"].get("g_fake") for r in results) else 2
    fig, axes = plt.subplots(rows, len(results), figsize=(4.8 * len(results), 3.2 * rows),
                             sharey="row", squeeze=False)
    for col, r in enumerate(results):
        _contribution_axes(axes[0, col], [r])
        ax = axes[1, col]
        _curve(ax, r["io_cosine"], "C0", "input vs output (9a)")
        _curve(ax, r["cross_z_cosine"], "C1", "across z, same class (9b)")
        _block_ticks(ax, r["depth"])
        ax.set(xlabel="block", ylabel="cosine similarity", title="Figs. 9a, 9b")
        ax.legend(fontsize=8)
        if rows == 3:
            _cknna_axes(axes[2, col], [r])
            axes[2, col].legend(fontsize=7)
        axes[0, col].set_title(f"{r['label']}\nblock contribution (Fig. 4b)")
    save(fig, path)


def pca_plot(images, pca, label: str, path: Path) -> None:
    """Fig. 4a: rows are samples; the decoded image, then the PCA of each block's tokens.

    ``images``: uint8 [S, 3, H, W]; ``pca``: uint8 [depth, S, 3, g, g]."""
    depth, samples = pca.shape[0], pca.shape[1]
    fig, axes = plt.subplots(samples, depth + 1, figsize=(1.3 * (depth + 1), 1.3 * samples),
                             squeeze=False)
    for s in range(samples):
        tiles = [images[s]] + [pca[b, s] for b in range(depth)]
        for col, tile in enumerate(tiles):
            ax = axes[s, col]
            ax.imshow(tile.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if s == 0:
                ax.set_title("sample" if col == 0 else f"block {col}", fontsize=8)
    fig.suptitle(f"{label}: PCA of block tokens (Fig. 4a)", fontsize=9)
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
           ylabel=label, title="FD vs training compute\n(paper Fig. 21: FID = 3.52e5 C^-0.456)")
    ax.legend(fontsize=7)
    save(fig, path)
