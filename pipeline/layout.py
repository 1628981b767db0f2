"""Every path the pipeline reads or writes, and the model size's one filesystem form.

Three places, three lifetimes:

- ``data/`` and ``outputs/`` of the checkout a stage runs in: DVC-tracked artefacts
  (cached, git-ignored): stand-ins, shards, teacher tokens, generators, sample grids.
- ``results/`` of that checkout: small metrics, tables and plots, tracked by git. DVC
  declares them ``cache: false``, so every experiment's commit keeps its own and
  ``dvc exp show`` / ``dvc metrics diff`` / ``dvc plots diff`` compare them.
- the *workspace*'s state, shared by every experiment of it: training checkpoints
  (``outputs/checkpoints/<size>/<run key>``), Ray Tune experiments (``outputs/tune/``) and
  the default MLflow store (``mlflow.db``, ``mlruns/``). With ``runtime.storage`` set (a
  folder every Ray node mounts, or an ``s3://``/``gs://`` URI), checkpoints and Tune
  experiments live there instead (:meth:`Layout.state`). A queued ``dvc exp run`` works in a
  temporary copy of the repo; DVC then points ``$DVC_ROOT`` at the workspace, so its runs,
  checkpoints and trials land beside the workspace's own, keyed by configuration.

A model size is written on disk exactly as it is named: ``GAT-T1/4`` nests as
``GAT-T1/4/``, as dvc.yaml's ``${item}`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.storage import StorePath, location

# The checkout: the package's parent, or $GAT_ROOT (tests run whole stages in a temporary
# root this way).
REPO_ROOT = Path(os.environ.get("GAT_ROOT") or Path(__file__).resolve().parent.parent)


def size_path(size: str) -> Path:
    """The relative path of a model size: ``GAT-T1/4`` -> ``GAT-T1/4`` (nested)."""
    if not size or size.startswith("/") or ".." in Path(size).parts:
        raise ValueError(f"model size {size!r} is not a relative name like GAT-T1/4")
    return Path(size)


# Fixed places, relative to the checkout (data/, results/) or to the workspace (state).
IN_CHECKOUT = {"tokenizer": "data/tokenizer", "teacher_model": "data/teacher_model",
               "classifier": "data/classifier", "shards": "data/shards/train",
               "teacher_tokens": "data/teacher", "reference": "data/reference",
               "results": "results", "scaling": "results/scaling", "sweep": "results/sweep",
               "claims": "results/claims", "report": "results/report"}
IN_WORKSPACE = {"tune": "outputs/tune", "mlflow_db": "mlflow.db"}


def run_path(size: str, seed: int) -> Path:
    """``GAT-T1/4``, seed 0 -> ``GAT-T1/4/seed0``: as dvc.yaml names the per-seed outputs."""
    return size_path(size) / f"seed{seed}"


@dataclass(frozen=True)
class Layout:
    root: Path  # the checkout the stage runs in
    workspace: Path  # the user's workspace (differs from root in a queued experiment)
    # data/: what every size shares (DVC-cached)
    tokenizer: Path = field(init=False)  # the tokenizer stage's folder
    teacher_model: Path = field(init=False)
    classifier: Path = field(init=False)  # the FD feature network
    shards: Path = field(init=False)  # latent shards + manifest.json
    teacher_tokens: Path = field(init=False)  # teacher tokens, aligned with the shards
    reference: Path = field(init=False)  # stats.npz + info.json of the eval split
    # results/: small, git-tracked, kept per experiment
    results: Path = field(init=False)
    scaling: Path = field(init=False)
    sweep: Path = field(init=False)
    claims: Path = field(init=False)  # one folder per claim: summary.json, runs.csv, plot
    report: Path = field(init=False)  # report.md: every claim's verdict, and the figures
    # the workspace's state, shared by its experiments
    tune: Path = field(init=False)  # Ray Tune experiments of the sweep
    mlflow_db: Path = field(init=False)  # the default MLflow store

    def __post_init__(self) -> None:
        for base, places in ((self.root, IN_CHECKOUT), (self.workspace, IN_WORKSPACE)):
            for name, relative in places.items():
                object.__setattr__(self, name, base / relative)

    @classmethod
    def from_env(cls, root: Path | None = None) -> Layout:
        """``root`` (default: the checkout); the workspace is ``$DVC_ROOT`` when DVC runs
        the stage (the parent repo of a queued experiment's copy), else ``root``."""
        root = Path(root or REPO_ROOT).resolve()
        workspace = os.environ.get("DVC_ROOT") if root == REPO_ROOT.resolve() else None
        return cls(root, Path(workspace).resolve() if workspace else root)

    # -- per size and training seed: outputs/ (DVC-cached), results/ (git); checkpoints
    def generator(self, size: str, seed: int) -> Path:
        return self.root / "outputs" / "train" / run_path(size, seed) / "generator"

    def samples(self, size: str, seed: int) -> Path:
        return self.root / "outputs" / "eval" / run_path(size, seed) / "samples.png"

    def interpolation(self, size: str, seed: int) -> Path:
        """The evaluate stage's interpolation strip (z, w and class walks)."""
        return self.root / "outputs" / "eval" / run_path(size, seed) / "interpolation.png"

    def pipeline(self, size: str, seed: int) -> Path:
        """The diffusers pipeline folder (GATPipeline) of a trained size."""
        return self.root / "outputs" / "pipeline" / run_path(size, seed)

    def train_results(self, size: str, seed: int) -> Path:
        """metrics.json and log.csv of one size's training with one seed."""
        return self.results / "train" / run_path(size, seed)

    def eval_metrics(self, size: str, seed: int) -> Path:
        return self.results / "eval" / run_path(size, seed) / "metrics.json"

    def data_metrics(self, stage: str) -> Path:
        return self.results / "data" / f"{stage}.json"

    def claim_generator(self, claim: str, variant: str, seed: int) -> Path:
        return self.root / "outputs" / "claims" / claim / variant / f"seed{seed}" / "generator"

    # -- the run state: runtime.storage, else the workspace's outputs/
    def state(self, storage: str = "") -> Path | StorePath:
        """Where Ray keeps run state: ``storage`` (a folder every node mounts, or a URI such
        as ``s3://bucket/gat``), else ``<workspace>/outputs`` (one machine)."""
        return location(storage) if storage else self.workspace / "outputs"

    def checkpoints(self, size: str, storage: str = "") -> Path | StorePath:
        """Ray Train's storage for ``size``: one folder per run key inside."""
        return self.state(storage) / "checkpoints" / size_path(size)

    def tune_state(self, storage: str = "") -> Path | StorePath:
        """Ray Tune's experiments: ``tune`` above, or ``<storage>/tune``."""
        return self.state(storage) / "tune" if storage else self.tune

    # -- what Ray workers read: the checkout's data/, or a copy at runtime.data_url
    def worker_data(self, data_url: str = "") -> tuple[str, str]:
        """(latent shard location, teacher token location) for the workers: ``data/shards/
        train`` and ``data/teacher``, or the same sub-folders of ``data_url`` (a folder, a
        URL, or a template whose ``{path}`` stands for a file's path under it)."""
        if not data_url:
            return str(self.shards), str(self.teacher_tokens)
        subs = (IN_CHECKOUT["shards"], IN_CHECKOUT["teacher_tokens"])
        subs = tuple(str(Path(sub).relative_to("data")) for sub in subs)
        if "{path}" in data_url:
            return tuple(data_url.replace("{path}", f"{sub}/{{path}}") for sub in subs)
        return tuple(f"{data_url.rstrip('/')}/{sub}" for sub in subs)


LAYOUT = Layout.from_env()
