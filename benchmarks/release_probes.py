"""Each release behaviour of issue 23 alone, on the code before it: FD and recall per seed.

    python benchmarks/release_probes.py --data data                 # every variant, 3 seeds
    python benchmarks/release_probes.py --data data --lanes 2 --variants base,logit --seeds 0
    python benchmarks/release_probes.py --table runs/probes.jsonl   # print the table only

Builds one source tree per variant under ``--work`` from ``git archive a4cc3c2`` (the
project before issue 23), changes exactly one behaviour in it, and trains GAT-T2/4 (the
study's 1000 iterations at batch 32) with ``benchmarks/quality_probe.py`` of that tree, on
the embedded study's ``data/`` (run ``dvc repro reference`` first). Variants:

- ``base``: a4cc3c2 as it is
- ``logit``: D's logit without the division by sqrt(proj_dim)
- ``repa``: REPA as [cls] plus the patch mean (not the mean over 1+N tokens)
- ``qk``: learned qk-RMSNorm scales, and D's absolute sin-cos position embedding
- ``mng``: the release's flow-style MNG schedule (gat/mng.py of ``--mng-from``)
- ``classlr``: G's class embedding at G's full lr (only the mapping MLP at x 0.01)
- ``all``: the tree of ``--new`` (every change together)

Each variant and its base share a seed's init (where shapes allow), data order and
evaluation draws, so the paired difference per seed is the change's effect. Every row
goes to ``--log`` (JSON lines); runs already there are skipped, so to resume, run the same
command again. FD is FD-classifier (a CPU stand-in, not FID). One torch thread per run,
``--lanes`` runs side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEFORE = "a4cc3c2"
VARIANTS = ("base", "logit", "repa", "qk", "mng", "classlr", "all")
LABELS = {"base": "a4cc3c2 as it is", "logit": "D logit without / sqrt(proj_dim)",
          "repa": "REPA: [cls] + patch mean", "qk": "learned qk scales + D's absolute position",
          "mng": "MNG: the release's flow schedule", "classlr": "G's class embedding at full lr",
          "all": "all of issue 23 together"}

# (file, old text, new text): one behaviour each, on the a4cc3c2 tree
PATCHES: dict[str, list[tuple[str, str, str]]] = {
    "logit": [("gat/models.py",
               "        logit = logit / math.sqrt(self.cfg.proj_dim)  # keeps the initial "
               "logit O(1)\n", "")],
    "repa": [("gat/losses.py",
              "    if mask is None:\n        return dist.mean()\n"
              "    return (dist * mask).sum() / mask.sum().clamp_min(1)",
              "    if mask is None:\n        mask = torch.ones_like(dist, dtype=torch.bool)\n"
              "    mask = mask.to(dist.dtype)\n"
              "    cls = (dist[:, 0] * mask[:, 0]).sum() / mask[:, 0].sum().clamp_min(1)\n"
              "    return cls + (dist[:, 1:] * mask[:, 1:]).sum() / "
              "mask[:, 1:].sum().clamp_min(1)")],
    "qk": [("gat/models.py",
            "        self.qkv = nn.Linear(width, 3 * width)\n",
            "        self.qkv = nn.Linear(width, 3 * width)\n"
            "        self.q_norm = RMSNorm(width // heads, affine=True)\n"
            "        self.k_norm = RMSNorm(width // heads, affine=True)\n"),
           ("gat/models.py",
            "q, k = apply_rope(rms_norm(q), rope), apply_rope(rms_norm(k), rope)",
            "q, k = apply_rope(self.q_norm(q), rope), apply_rope(self.k_norm(k), rope)"),
           ("gat/models.py",
            "        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))\n",
            "        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))\n"
            "        self.register_buffer(\"pos_embed\", sincos_2d(cfg.width, self.grid), "
            "persistent=False)\n"),
           ("gat/models.py",
            "        h = self.patch_embed(patchify(x, self.cfg.patch))\n",
            "        h = self.patch_embed(patchify(x, self.cfg.patch)) + self.pos_embed\n")],
    "mng": [("gat/train.py",
             "mng_eps = nested_noise(levels[-1].shape, self.alphas, None, self.device, "
             "levels[-1].dtype)",
             "mng_eps = nested_noise(levels[-1].shape, self.cfg.mng, \"release\", None, "
             "self.device,\n                               levels[-1].dtype)")],
    "classlr": [("gat/models.py", "        return list(self.mapping.parameters())",
                 "        return list(self.mapping.mlp.parameters())")],
}


def archive(commit: str, dest: Path) -> None:
    dest.mkdir(parents=True)
    tar = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True,
                         check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)


def build(variant: str, work: Path, data: Path, new: str, mng_from: str) -> Path:
    """The variant's source tree (made once), with ``data`` linked in."""
    tree = work / variant
    if tree.exists():
        return tree
    archive(new if variant == "all" else BEFORE, tree)
    for name, old, text in PATCHES.get(variant, []):
        path = tree / name
        source = path.read_text()
        if old not in source:
            raise SystemExit(f"{variant}: {name} of {BEFORE} lacks the text to change")
        path.write_text(source.replace(old, text, 1))
    if variant == "mng":
        mng = subprocess.run(["git", "show", f"{mng_from}:gat/mng.py"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        (tree / "gat" / "mng.py").write_text(mng)
    (tree / "data").symlink_to(data.resolve())
    return tree


def run(tree: Path, variant: str, seed: int, log: Path, size: str) -> None:
    cmd = [sys.executable, "benchmarks/quality_probe.py", "--size", size, "--seed", str(seed),
           "--threads", "1", "--tag", variant, "--log", str(log.resolve())]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    print(f"{variant} seed {seed}: rc {out.returncode}", out.stdout.strip().splitlines()[-1:]
          if out.returncode == 0 else out.stderr[-2000:], flush=True)


def table(log: Path) -> str:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    by: dict[str, dict[int, dict]] = {}
    for r in rows:
        by.setdefault(r["tag"], {})[r["seed"]] = r
    base = by.get("base", {})
    lines = ["| change alone (GAT-T2/4, 1000 it. x 32) | seeds | FD-classifier per seed | "
             "paired FD change (mean ± sd) | recall per seed | paired recall change | "
             "class accuracy (mean) |", "|---|---|---|---|---|---|---|"]

    def paired(tag: str, runs: dict, key: str, fmt: str) -> str:
        d = [runs[s][key] - base[s][key] for s in runs if s in base]
        if not d or tag == "base":
            return ""
        sd = f" ± {statistics.stdev(d):{fmt}}" if len(d) > 1 else ""
        return f"{statistics.mean(d):+{fmt}}{sd}"

    for tag in VARIANTS:
        if tag not in by:
            continue
        runs = dict(sorted(by[tag].items()))
        fds = " / ".join(f"{r['fd']:.2f}" for r in runs.values())
        recalls = " / ".join(f"{r['recall']:.3f}" for r in runs.values())
        accuracy = statistics.mean(r["class_accuracy"] for r in runs.values())
        lines.append(f"| {LABELS[tag]} | {len(runs)} | {fds} | {paired(tag, runs, 'fd', '.2f')} | "
                     f"{recalls} | {paired(tag, runs, 'recall', '.3f')} | {accuracy:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gat-release-probes"))
    parser.add_argument("--log", type=Path, default=Path("runs/release_probes.jsonl"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lanes", type=int, default=1)
    parser.add_argument("--size", default="GAT-T2/4")
    parser.add_argument("--new", default="HEAD", help="the commit of the 'all' variant")
    parser.add_argument("--mng-from", default="HEAD", help="the commit whose gat/mng.py "
                        "the 'mng' variant takes")
    parser.add_argument("--table", type=Path, help="only print the table of this log")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not (args.data / "reference").exists():
        raise SystemExit(f"--data {args.data}: no reference/ in it; run `dvc repro reference` "
                         "first (the embedded profile)")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.log.exists():
        done = {(r["tag"], r["seed"]) for r in map(json.loads, args.log.read_text().split("\n")
                                                   [:-1]) if r}
    jobs = [(v, int(s)) for s in args.seeds.split(",") for v in args.variants.split(",")
            if (v, int(s)) not in done]
    trees = {v: build(v, args.work, args.data, args.new, args.mng_from) for v, _ in jobs}
    with ThreadPoolExecutor(args.lanes) as pool:
        list(pool.map(lambda job: run(trees[job[0]], job[0], job[1], args.log, args.size),
                      jobs))
    print(table(args.log))


if __name__ == "__main__":
    main()
