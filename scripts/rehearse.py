"""The paper's study rehearsed end to end on CPU: profiles/paper.yaml's whole DVC pipeline,
with its real architectures at random init, on a generated ImageNet-layout folder.

    bash scripts/rehearse.sh                    # set up, then everything below (~10 min)
    python scripts/rehearse.py --gpus 1         # on a GPU (scripts/gpu_check.sh runs it)
    python scripts/rehearse.py --work DIR       # the same in DIR (kept; rerun resumes)
    python scripts/rehearse.py --dry-run        # the params it would run, nothing else

What it sets, and nothing else (every other key is the paper profile's, and the stages run
their real code; no path is special to the rehearsal):
- data: a generated folder of 256+ px JPEGs in the ImageNet layout (class sub-folders),
  train and val, a few classes x a few images;
- the hub: a local Hugging Face cache holding SD-VAE (sd-vae-ft-ema's config) and DINOv2-B
  (dinov2-base's config) at random init, under the revisions the paper profile pins, read
  offline by ``from_pretrained(..., revision=...)``; torch-fidelity's Inception-v3 from a
  weights file of random values (``$GAT_INCEPTION_WEIGHTS``); ADM's reference-batch format
  (``arr_0``, ``mu``, ``sigma``, ``mu_s``, ``sigma_s``) made from the val images;
- sizes and counts: GAT-S/2, S/4 and S/8 at the true latent size (32x32x4: the same
  width and depth, 256, 64 and 16 tokens; the scaling fit needs three points), a few
  iterations at 2 images per worker on 2 Ray Train workers (gloo), 6 samples for FID, one
  seed per class in the grids and 2 frames in the strips (SD-VAE decodes a 256 px image in
  about 5 s on a CPU core: every picture counts against CI's 10 minutes),
  ``runtime.use_gpu: false`` with ``runtime.pool: ray`` (the data and evaluation stages on
  the Ray actor pool, as on GPUs); with ``--gpus N``, one worker per GPU instead.

It runs as a user would: ``gat profile`` writes params.yaml of a fresh copy of the checkout,
and ``dvc exp run --name rehearsal`` runs every stage; MLflow gets one sqlite store. To
resume after a failure or a kill, run the same command again: finished stages are kept. It prints
each stage's wall time. The numbers mean nothing (random weights): it checks that the
paper's path runs, not what it computes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's tests.helpers: copying a checkout, its env
from tests.helpers import copy_repo, dvc_env  # noqa: E402

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 2, 4, 3
ADM_SPATIAL = 2023  # width of ADM's spatial features (mu_s): 7 channels x 17 x 17


def rehearsal_params(work: Path, gpus: int = 0) -> dict:
    """profiles/paper.yaml with the rehearsal's data, sizes and counts; on ``gpus`` GPUs
    (one Ray Train worker each), else on 2 CPU workers."""
    workers = gpus or 2
    params = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    sets = {
        ("study", "sizes"): ["GAT-S/2", "GAT-S/4", "GAT-S/8"],  # scaling fits >= 3 points
        ("data", "path"): str(work / "imagenet" / "train"),
        ("data", "eval_path"): str(work / "imagenet" / "val"),
        ("data", "shard_size"): 8,               # several shards, flip pairs kept whole
        ("evaluator", "reference"): str(work / "imagenet" / "VIRTUAL_rehearsal256_labeled.npz"),
        ("train", "batch"): 2 * workers,         # 2 per worker
        ("train", "iterations"): 4,
        ("train", "shuffle_buffer"): 16,
        # SD-VAE decodes a 256 px image in ~5 s on one core: every picture is counted
        ("evaluate", "num_samples"): 6,
        ("evaluate", "batch"): 3,
        ("evaluate", "grid_seeds"): 1,
        ("evaluate", "strip_frames"): 2,
        ("runtime", "workers"): workers,
        ("runtime", "use_gpu"): gpus > 0,
        ("runtime", "pool"): "ray",
        ("runtime", "cpus_per_worker"): 1.0,
        ("runtime", "checkpoint_every"): 4,   # the last step's only
        ("runtime", "log_every"): 1,
        ("runtime", "sample_every"): 4,
        ("runtime", "sample_seeds"): 1,
        ("runtime", "fd_every"): 4,
        ("runtime", "fd_samples"): 2,
        ("runtime", "loader_workers"): 1,
        ("runtime", "encode_batch"): 8,
    }
    for (section, key), value in sets.items():
        assert key in params[section], f"profiles/paper.yaml has no {section}.{key}"
        params[section][key] = value
    return params


def make_images(root: Path, per_class: int, seed: int) -> None:
    """JPEGs of smooth colour fields, 288x320 (the stages centre-crop and resize to 256),
    one folder per class named as ImageNet's synsets are."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:288, 0:320] / 320.0
    for c in range(CLASSES):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            freq, phase = rng.uniform(2, 6, 3) * (c + 1), rng.uniform(0, 6.3, 3)
            img = np.stack([np.sin(freq[k] * (xx + yy * k) + phase[k]) for k in range(3)], -1)
            pixels = ((img * 0.5 + 0.5) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"n{c:08d}_{i}.JPEG", quality=90)


def hub_cache(cache: Path, params: dict) -> None:
    """SD-VAE and DINOv2-B at random init, saved as a hub download leaves them:
    models--ORG--NAME/{refs/main, snapshots/<the pinned revision>/}."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    models = {
        "tokenizer": lambda: AutoencoderKL(  # stabilityai/sd-vae-ft-ema's config.json
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
            sample_size=256, scaling_factor=0.18215),
        "teacher": lambda: Dinov2Model(Dinov2Config(  # facebook/dinov2-base's config.json
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
            patch_size=14, image_size=518, layerscale_value=1.0, hidden_act="gelu",
            layer_norm_eps=1e-6, qkv_bias=True, use_swiglu_ffn=False)),
    }
    for section, make in models.items():
        repo, revision = params[section]["source"], params[section]["revision"]
        folder = cache / f"models--{repo.replace('/', '--')}"
        if (folder / "snapshots" / revision).exists():
            continue
        make().save_pretrained(folder / "snapshots" / revision)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(revision)


def inception_weights(path: Path) -> None:
    """torch-fidelity's Inception-v3 state dict at its shapes, random values: the layers
    its FeatureExtractorInceptionV3 builds, built from the same blocks of its module."""
    if path.exists():
        return
    import torch
    from torch import nn
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    net = nn.Module()
    layers = {
        "Conv2d_1a_3x3": tfi.BasicConv2d(3, 32, kernel_size=3, stride=2),
        "Conv2d_2a_3x3": tfi.BasicConv2d(32, 32, kernel_size=3),
        "Conv2d_2b_3x3": tfi.BasicConv2d(32, 64, kernel_size=3, padding=1),
        "Conv2d_3b_1x1": tfi.BasicConv2d(64, 80, kernel_size=1),
        "Conv2d_4a_3x3": tfi.BasicConv2d(80, 192, kernel_size=3),
        "Mixed_5b": tfi.InceptionA(192, pool_features=32),
        "Mixed_5c": tfi.InceptionA(256, pool_features=64),
        "Mixed_5d": tfi.InceptionA(288, pool_features=64),
        "Mixed_6a": tfi.InceptionB(288),
        "Mixed_6b": tfi.InceptionC(768, channels_7x7=128),
        "Mixed_6c": tfi.InceptionC(768, channels_7x7=160),
        "Mixed_6d": tfi.InceptionC(768, channels_7x7=160),
        "Mixed_6e": tfi.InceptionC(768, channels_7x7=192),
        "Mixed_7a": tfi.InceptionD(768),
        "Mixed_7b": tfi.InceptionE_1(1280),
        "Mixed_7c": tfi.InceptionE_2(2048),
        "fc": nn.Linear(2048, 1008),
    }
    for name, layer in layers.items():
        net.add_module(name, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


def adm_reference(path: Path, val: Path, env: dict[str, str]) -> None:
    """An .npz in the format of ADM's VIRTUAL_imagenet256_labeled.npz, of the val images:
    arr_0 (the images, uint8 [N, 256, 256, 3]), mu and sigma of the Inception pool
    features (through this project's evaluator, in a process that sees the random
    weights), and mu_s / sigma_s of ADM's spatial features, which no stage reads (zeros at
    their shape: torch-fidelity has no such layer)."""
    if path.exists():
        return
    code = f"""
import numpy as np, torch
from pipeline.config import DataParams
from pipeline.data import open_split
from pipeline.fidelity import evaluator, extract, statistics
split = open_split(DataParams(source="imagefolder", path={str(val)!r}, eval_path={str(val)!r},
                              resolution=256), "eval")
images = torch.cat([im for _, im in split.batches(16)])
stats = statistics(extract(evaluator("inception", device="cpu"), [images])["features"])
np.savez({str(path)!r}, arr_0=images.permute(0, 2, 3, 1).numpy(), mu=stats["mu"],
         sigma=stats["sigma"], mu_s=np.zeros({ADM_SPATIAL}),
         sigma_s=np.zeros(({ADM_SPATIAL}, {ADM_SPATIAL})))
print("reference batch:", images.shape[0], "images")
"""
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)


def study_env(work: Path) -> dict[str, str]:
    """The environment of the study's user: offline hub, the random Inception weights, and
    the study's own code first on PYTHONPATH (the venv is this checkout's, where ``gat`` is
    installed: without it, ``gat profile`` would write this checkout's params.yaml)."""
    return {**dvc_env(), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(work / "study"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_CACHE": str(work / "hub"),
            "GAT_INCEPTION_WEIGHTS": str(work / "inception" / "pt_inception-random.pth")}


def checkout(study: Path, env: dict[str, str]) -> None:
    """A fresh study: the checkout's tracked and untracked-but-not-ignored files, as a fresh
    clone has them (the embedded study's dvc.lock and results/ too: the paper's stages
    replace theirs), the venv linked, committed in a new git repo. Kept when it exists
    (resume)."""
    if (study / ".git").exists():
        return
    study.mkdir(parents=True, exist_ok=True)
    copy_repo(study)
    (study / ".venv").symlink_to(Path(sys.executable).parent.parent)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "the checkout, before the rehearsal"]):
        subprocess.run(cmd, cwd=study, env=env, check=True)


def run(cmd: list[str], cwd: Path, env: dict[str, str], stages: dict[str, float] | None = None
        ) -> None:
    """Run ``cmd``, streaming its output; with ``stages``, the seconds of each DVC stage."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    current, start = None, time.monotonic()
    for line in proc.stdout:
        sys.stdout.write(line)
        found = re.match(r"Running stage '([^']+)'", line)
        if stages is not None and found:
            now = time.monotonic()
            if current:
                stages[current] = now - start
            current, start = found.group(1), now
    if proc.wait() != 0:
        raise SystemExit(f"rehearsal failed: {' '.join(cmd)} exited {proc.returncode} "
                         f"(in {cwd}); the stage above names what broke")
    if stages is not None and current:
        stages[current] = time.monotonic() - start


def training_figures(study: Path) -> str:
    """Each training run's median step time, images/s and FD-proxy seconds, from the
    study's MLflow store (a markdown table)."""
    import statistics

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    lines = ["\n| size | steps | step time (s, median) | images/s (median) | FD proxy (s) |",
             "|---|---|---|---|---|"]

    def median(run_id: str, key: str) -> str:
        values = [m.value for m in client.get_metric_history(run_id, key)]
        return f"{statistics.median(values):.3g}" if values else "-"

    for run in client.search_runs(experiments, "tags.`gat.role` = 'train'"):
        rid = run.info.run_id
        lines.append(f"| {run.data.tags.get('gat.size', '?')} | "
                     f"{run.data.params.get('train.iterations', '?')} | "
                     f"{median(rid, 'step_time_s')} | {median(rid, 'images_per_s')} | "
                     f"{median(rid, 'fd_proxy_s')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gat-rehearsal"),
                        help="where the study copy, images, hub cache and weights go; "
                             "run the same command again to resume")
    parser.add_argument("--gpus", type=int, default=0,
                        help="rehearse on this many GPUs, one worker each (scripts/gpu_check.sh)"
                             "; default 0: on 2 CPU workers")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the rehearsal's params and stop")
    args = parser.parse_args()
    work = args.work.resolve()
    params = rehearsal_params(work, args.gpus)
    if args.dry_run:
        print(yaml.safe_dump(params, sort_keys=False))
        return
    t0, study, env = time.monotonic(), work / "study", study_env(work)
    timings: dict[str, float] = {}
    print(f"rehearsal in {work}")
    make_images(work / "imagenet" / "train", TRAIN_PER_CLASS, seed=0)
    make_images(work / "imagenet" / "val", VAL_PER_CLASS, seed=1)
    hub_cache(work / "hub", params)
    inception_weights(Path(env["GAT_INCEPTION_WEIGHTS"]))
    adm_reference(Path(params["evaluator"]["reference"]), work / "imagenet" / "val", env)
    timings["setup (images, random weights, reference batch)"] = time.monotonic() - t0
    checkout(study, env)
    (work / "rehearsal.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["gat", "profile", str(work / "rehearsal.yaml")], study, env)
    listed = subprocess.run(["dvc", "exp", "list", "--name-only"], cwd=study, env=env,
                            capture_output=True, text=True, check=True).stdout.split()
    if "rehearsal" in listed:  # a finished rehearsal run again: run it again
        subprocess.run(["dvc", "exp", "remove", "rehearsal"], cwd=study, env=env, check=True)
    stages: dict[str, float] = {}
    run(["dvc", "exp", "run", "--name", "rehearsal"], study, env, stages)
    timings.update(stages)
    total = time.monotonic() - t0
    print("\n| stage | wall time (s) |\n|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| all | {total:.1f} |")
    (work / "timings.json").write_text(json.dumps({**timings, "all": total}, indent=1))
    run(["dvc", "exp", "show", "--md", "--drop", ".*", "--keep",
         "Experiment|.*eval.*:fd$|b$"], study, env)
    print(training_figures(study))
    print(f"\nrehearsal passed in {total:.0f} s: every stage of the paper profile ran "
          f"({work / 'study'}; MLflow: sqlite:///{study / 'mlflow.db'})")


if __name__ == "__main__":
    main()
