"""The paper's claims as targets: variants of one training, compared under several seeds.

A claim names its variants (a model, and params that differ from the study's: MNG
schedule, REPA weight, learning rate, D's size, patch size) and the comparisons the paper
makes between them ("exp beats lin"). Every variant trains under every seed of
``claims.seeds`` through the train stage's own code (so identical configurations share
one run and one MLflow run), is evaluated like the ladder, and each comparison gets a
verdict from a 95% interval.

The design is paired, with common random numbers: under one seed, two variants see the
same batches in the same order, the same z and noise draws, the same initial weights
wherever their shapes agree, and are scored on the same evaluation samples' z. So a
comparison's statistic is the per-seed difference FD(worse) - FD(better), and its verdict
comes from the Student t interval of the mean difference (:func:`compare_paired`):

- ``holds``: the interval lies above 0 (the paper's order);
- ``reversed``: it lies below 0;
- ``inconclusive (interval holds 0)``, or ``(one seed: no interval)``.

What the seed changes alike in both variants cancels in the difference: this detects
gaps several times smaller than comparing the two variants' own intervals. A diverged run
counts as worse than any finite FD (then the two variants' own intervals decide:
:func:`compare`). The claim's verdict sums up its comparisons.
"""

from __future__ import annotations

import itertools
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gat.models import model_config
from gat.train import lr_base_at
from pipeline.config import CLAIM_NAMES, Params, with_overrides
from pipeline.files import digest
from pipeline.layout import LAYOUT, Layout
from pipeline.storage import write_text

HOLDS, REVERSED, ONE_SEED = "holds", "reversed", "inconclusive (one seed: no interval)"
OVERLAP = "inconclusive (intervals overlap)"  # two variants' own intervals (a diverged run)
HOLDS_ZERO = "inconclusive (interval holds 0)"  # the paired difference's interval
CONTRADICTED = "contradicted"  # a claim with a comparison reversed
CLAIMS = CLAIM_NAMES


@dataclass(frozen=True)
class Variant:
    name: str  # unique within its claim: a folder name
    label: str  # for tables and plots
    size: str  # G's model (and D's, unless train.d_size says otherwise)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted params keys


@dataclass(frozen=True)
class Claim:
    name: str
    figure: str  # where the paper shows it
    statement: str  # what the paper claims, in words
    variants: list[Variant]
    comparisons: list[tuple[str, str]]  # (better, worse): lower FD expected for `better`
    paper: dict[str, float] = field(default_factory=dict)  # variant -> the paper's number
    paper_metric: str = ""  # what the paper's numbers are (e.g. "FID-5K, S/2 and B/2")


def claims(params: Params) -> dict[str, Claim]:
    """Every claim, with its variants built from ``params.claims``."""
    c = params.claims
    found = [_mng(c.size), _repa(c.size), _lr_transfer(params, c.small, c.large),
             _g_vs_d(c.size, c.bigger), _patch(c.patch_sizes)]
    return {claim.name: claim for claim in found}


def _mng(size: str) -> Claim:
    names = {"exp": "MNG exp", "lin": "MNG lin", "none": "w/o MNG", "msg": "MSG"}
    return Claim(
        "mng", "Fig. 5a", "exponential MNG beats linear, which beats none; MSG is worst",
        [Variant(n, label, size, {"train.mng": n}) for n, label in names.items()],
        [("exp", "lin"), ("lin", "none"), ("none", "msg")])


def _repa(size: str) -> Claim:
    return Claim(
        "repa", "Fig. 5c, Tab. 10", "REPA on D lowers FID",
        [Variant("on", "REPA on", size, {}), Variant("off", "REPA off", size,
                                                     {"train.repa_weight": 0.0})],
        [("on", "off")], {"on": 30.09, "off": 51.43}, "FID-5K, S/2 after 10 epochs")


def _lr_transfer(params: Params, small: str, large: str) -> Claim:
    """Each size at its own width-adapted lr and at the other size's (both directions)."""
    def at_lr_of(size: str, like: str) -> dict[str, Any]:
        return {"train.lr_base": lr_base_at(params.train, size, like)}

    return Claim(
        "lr_transfer", "Fig. 5b, Tab. 4",
        "the larger size at the smaller size's lr degrades or diverges; the smaller size at "
        "the larger size's lr learns slower",
        [Variant("small_own", f"{small} own lr", small, {}),
         Variant("small_at_large", f"{small} at {large}'s lr", small, at_lr_of(small, large)),
         Variant("large_own", f"{large} own lr", large, {}),
         Variant("large_at_small", f"{large} at {small}'s lr", large, at_lr_of(large, small))],
        [("large_own", "large_at_small"), ("small_own", "small_at_large")],
        {"small_own": 22.08, "small_at_large": 26.41, "large_own": 15.61,
         "large_at_small": 56.72}, "FID-5K, S/2 and B/2")


def _g_vs_d(size: str, bigger: str) -> Claim:
    return Claim(
        "g_vs_d", "Fig. 7a (text: Fig. 6a)",
        "scaling G or D alone helps, and scaling D helps more, at equal steps",
        [Variant("base", f"G {size}, D {size}", size, {}),
         Variant("bigger_g", f"G {bigger}, D {size}", bigger, {"train.d_size": size}),
         Variant("bigger_d", f"G {size}, D {bigger}", size, {"train.d_size": bigger})],
        [("bigger_g", "base"), ("bigger_d", "base"), ("bigger_d", "bigger_g")])


def _patch(sizes: list[str]) -> Claim:
    """``sizes`` from the smallest patch (most compute) to the largest."""
    ordered = sorted(sizes, key=lambda s: model_config(s).patch)
    variants = [Variant(f"patch{model_config(s).patch}", s, s, {}) for s in ordered]
    return Claim("patch", "Fig. 3b", "a smaller patch (more tokens, more compute) is better",
                 variants, [(a.name, b.name) for a, b in itertools.pairwise(variants)])


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Summary:
    """One variant over its seeds: mean FD and a 95% interval [low, high] of it.

    Student t over the seeds' FDs. A diverged seed (FD ``inf``) makes the variant worse
    than its finite seeds by an unknown amount: [lowest finite FD, inf]; every seed
    diverged: [inf, inf]. One finite seed: [FD, FD], but no interval to compare with.
    """

    mean: float
    low: float
    high: float
    seeds: int
    diverged: int

    @classmethod
    def of(cls, fds: list[float]) -> Summary:
        """``fds``: one FD per seed, ``inf`` for a diverged run."""
        finite = np.array([f for f in fds if math.isfinite(f)], dtype=float)
        n, diverged = len(fds), len(fds) - len(finite)
        if not len(finite):
            return cls(math.inf, math.inf, math.inf, n, diverged)
        if diverged:
            return cls(math.inf, float(finite.min()), math.inf, n, diverged)
        mean = float(finite.mean())
        half = 0.0 if n == 1 else t95(n - 1) * float(finite.std(ddof=1)) / math.sqrt(n)
        return cls(mean, mean - half, mean + half, n, 0)


def t95(df: int) -> float:
    """Two-sided 95% Student t quantile for ``df`` >= 1 (a table: no scipy needed)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365,
             8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
    return 1.96 if df > 30 else table[max(k for k in table if k <= df)]


def compare(better: Summary, worse: Summary) -> str:
    """The verdict on the paper's "``better`` has the lower FD than ``worse``"."""
    if better.diverged == better.seeds and worse.diverged == worse.seeds:
        return OVERLAP  # both diverged everywhere: no order to see
    if better.seeds == worse.seeds == 1 and not (better.diverged or worse.diverged):
        return ONE_SEED
    if better.high < worse.low:
        return HOLDS
    if worse.high < better.low:
        return REVERSED
    return OVERLAP


def compare_paired(better: dict[int, float], worse: dict[int, float]) -> dict[str, Any]:
    """The paired verdict on "``better`` has the lower FD than ``worse``", from each
    variant's FD per seed (``inf``: diverged): the seeds both have, the mean of FD(worse)
    - FD(better) over them and its 95% Student t interval [low, high], and ``detectable``,
    the interval's half width: the smallest mean gap this design calls (at this spread).
    With a diverged run among them the variants' own intervals decide (:func:`compare`)."""
    seeds = sorted(set(better) & set(worse))
    out: dict[str, Any] = {"seeds": len(seeds), "difference": None, "low": None,
                           "high": None, "detectable": None, "seeds_needed": None}
    if any(not math.isfinite(better[s]) or not math.isfinite(worse[s]) for s in seeds):
        return {**out, "verdict": compare(Summary.of([better[s] for s in seeds]),
                                          Summary.of([worse[s] for s in seeds]))}
    diffs = np.array([worse[s] - better[s] for s in seeds], dtype=float)
    if len(diffs) < 2:
        return {**out, "verdict": ONE_SEED,
                "difference": float(diffs[0]) if len(diffs) else None}
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    half = t95(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    found = HOLDS if mean - half > 0 else REVERSED if mean + half < 0 else HOLDS_ZERO
    return {**out, "verdict": found, "difference": mean, "low": mean - half,
            "high": mean + half, "detectable": half, "seeds_needed": seeds_needed(mean, sd)}


def seeds_needed(mean: float, sd: float, most: int = 100) -> int | None:
    """The fewest seeds whose 95% paired interval would exclude 0 if the per-seed
    differences kept this ``mean`` and ``sd``: the smallest n with t95(n-1) sd / sqrt(n) <
    |mean|; None beyond ``most`` (a mean of 0 is never called). A projection for planning
    a suite, not a result: a sd from three seeds is itself uncertain by a factor of ~2."""
    if sd == 0:
        return 2 if mean else None
    return next((n for n in range(2, most + 1)
                 if t95(n - 1) * sd / math.sqrt(n) < abs(mean)), None)


def verdict(results: list[str]) -> str:
    """A claim's verdict from its comparisons' verdicts: ``holds`` when every one holds;
    ``contradicted`` when any is reversed (the paper states every order it compares);
    else inconclusive. With several comparisons the counts follow."""
    n = len(results)
    counts = {v: results.count(v) for v in (REVERSED, HOLDS) if results.count(v)}
    rest = n - sum(counts.values())
    parts = ", ".join([f"{k} {v}" for v, k in counts.items()]
                      + ([f"{rest} inconclusive"] if rest else []))
    if n and counts.get(HOLDS) == n:
        return HOLDS
    if REVERSED in counts:
        return CONTRADICTED if n == 1 else f"{CONTRADICTED} ({parts} of {n})"
    if len(set(results)) == 1:
        return results[0]
    return f"inconclusive ({parts} of {n})"


# ----------------------------------------------------------------------------- running


def variant_params(params: Params, variant: Variant) -> Params:
    """The study's params with the variant's changes and the claims' length."""
    return with_overrides(params, {"train.iterations": params.claims.iterations,
                                   "train.kimg": 0.0, **variant.overrides}, check_paths=False)


def run_variants(params: Params, claim: Claim, layout: Layout = LAYOUT
                 ) -> list[dict[str, Any]]:
    """Every variant under every seed (:func:`run_variant`), the rows variant by variant,
    ``runtime.concurrent_runs`` trainings at a time.

    Side by side, each run's workers get ``runtime.cpus_per_worker / concurrent_runs`` CPUs
    (torch threads; this process evaluates with as many): a GAT-T1/4 step is only 1.19x
    faster on 2 threads than on 1 (``benchmarks/train_throughput.py``), so two 1-thread
    runs on 2 cores train more images per second than one 2-thread run, and one run's
    start-up and evaluation overlap the other's steps. The thread count changes a run's
    floating-point sums, not its configuration: its run key stays the same. Runs that share
    a run key (variants that coincide) train once: the later ones publish it afterwards.
    """
    pairs = [(v, s) for v in claim.variants for s in params.claims.seeds]
    at_once = min(params.runtime.concurrent_runs, len(pairs))
    if at_once == 1:
        return [run_variant(params, claim, v, s, layout) for v, s in pairs]
    import ray
    import torch

    from pipeline.identity import run_identity
    from pipeline.ray_utils import init_ray

    cpus = params.runtime.cpus_per_worker / at_once
    shared = with_overrides(params, {"runtime.cpus_per_worker": cpus}, check_paths=False)
    if not params.runtime.use_gpu:
        torch.set_num_threads(max(1, int(cpus)))
    keys = [run_identity(variant_params(shared, v), v.size, s, layout).key for v, s in pairs]
    first = [i for i, key in enumerate(keys) if keys.index(key) == i]
    init_ray()  # once, before the threads (each run would start it)
    # diffusers resolves its top-level names on first use, and not thread-safely: two runs'
    # evaluations importing the tokenizer's class at once failed with ImportError (seen in
    # the tests' claims build). Resolve it here, before the threads.
    from diffusers import AutoencoderKL  # noqa: F401
    rows: dict[int, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(at_once, thread_name_prefix="claim-run")
    try:
        futures = {i: pool.submit(run_variant, shared, claim, *pairs[i], layout)
                   for i in first}
        rows.update((i, f.result()) for i, f in futures.items())
    except BaseException:  # a run failed, or Ctrl-C: start no other, and stop those going
        pool.shutdown(wait=False, cancel_futures=True)  # (Ray Train's own Ctrl-C handler
        ray.shutdown()  # is the main thread's only); their last checkpoints stay for a rerun
        raise
    pool.shutdown()
    for i, pair in enumerate(pairs):  # a key met before: trained by now, published here
        if i not in rows:
            rows[i] = run_variant(shared, claim, *pair, layout)
    return [rows[i] for i in range(len(pairs))]


def run_variant(params: Params, claim: Claim, variant: Variant, seed: int,
                layout: Layout = LAYOUT) -> dict[str, Any]:
    """Train one variant under one seed through the train stage's code (a configuration
    trained before, by any claim or the ladder, resumes finished), evaluate it like the
    ladder (once per run and evaluation settings), and return its row."""
    from gat.train import NonFiniteError
    from pipeline.training import run_training

    p = variant_params(params, variant)
    out = layout.claim_generator(claim.name, variant.name, seed).parent
    row = {"claim": claim.name, "variant": variant.name, "label": variant.label,
           "size": variant.size, "d_size": p.train.d_size or variant.size, "seed": seed}
    try:
        trained = run_training(p, variant.size, seed, layout, out_dir=out)
    except NonFiniteError as err:
        return {**row, "fd": math.inf, "diverged": True, "error": str(err)}
    metrics = _evaluated(p, out, trained, layout)
    return {**row, "diverged": False, "error": "", "run_key": trained["run_key"],
            **{k: metrics[k] for k in EVAL_COLUMNS if k in metrics}}


EVAL_COLUMNS = ("fd", "metric", "precision", "recall", "class_accuracy", "g_gflops",
                "mlflow_run_id")


def _evaluated(params: Params, out: Path, trained: dict[str, Any], layout: Layout
               ) -> dict[str, Any]:
    """The evaluation of a trained variant, cached in its run's folder by settings."""
    from pipeline.evaluation import evaluate_folder

    settings = {"evaluate": params.section("evaluate"), "source": params.evaluator.source,
                "seed": params.study.seed}
    run_dir = layout.checkpoints(trained["size"], params.runtime.storage) / trained["run_key"]
    cache = run_dir / f"eval-{digest([], extra=settings)[:10]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    metrics = evaluate_folder(params, out / "generator", out / "samples.png", layout)
    write_text(cache, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def summarize(claim: Claim, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: the seeds' mean FD with its interval; per comparison and for the
    claim: the verdict. JSON-ready (an ``inf`` FD becomes the string "diverged")."""
    fds = {v.name: {r["seed"]: r["fd"] for r in rows if r["variant"] == v.name}
           for v in claim.variants}  # variant -> seed -> FD
    summaries = {name: Summary.of(list(by_seed.values())) for name, by_seed in fds.items()}
    comparisons = [{"better": b, "worse": w, **compare_paired(fds[b], fds[w])}
                   for b, w in claim.comparisons]
    variants = [{"variant": v.name, "label": v.label, "size": v.size,
                 "mean": summaries[v.name].mean, "low": summaries[v.name].low,
                 "high": summaries[v.name].high, "seeds": summaries[v.name].seeds,
                 "diverged": summaries[v.name].diverged, "paper": claim.paper.get(v.name)}
                for v in claim.variants]
    metric = next((r["metric"] for r in rows if r.get("metric")), "FD")
    return _json_safe({
        "claim": claim.name, "figure": claim.figure, "statement": claim.statement,
        "metric": metric, "paper_metric": claim.paper_metric, "variants": variants,
        "comparisons": comparisons, "verdict": verdict([c["verdict"] for c in comparisons])})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "diverged" if obj > 0 else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def analyze_mng(params: Params, layout: Layout = LAYOUT) -> dict[str, Any] | None:
    """The block analyses (paper Figs. 4a, 4b, 6b, 9) of MNG exp vs none, first seed, into
    results/claims/mng/analysis/; None (and why, printed) when either diverged."""
    from pipeline.analysis import Subject, analyze, load_parts

    seed, c = params.claims.seeds[0], params.claims
    subjects = [Subject(layout.claim_generator("mng", name, seed), label, mng=name)
                for name, label in (("exp", "MNG exp"), ("none", "w/o MNG"))]
    missing = [str(s.generator) for s in subjects if not (s.generator / "config.json").exists()]
    if missing:
        print(f"claim mng: no block analyses: {', '.join(missing)} diverged or missing")
        return None
    parts = load_parts(params.tokenizer.source, params.evaluator.source,
                       teacher=params.teacher.source,
                       teacher_input_size=params.teacher.input_size, shards=layout.shards,
                       layout=layout, decoder_revision=params.tokenizer.revision,
                       teacher_revision=params.teacher.revision)
    return analyze(subjects, layout.claims / "mng" / "analysis", parts, c.analysis_samples,
                   c.analysis_per_class, params.study.seed, layout=layout)
