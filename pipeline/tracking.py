"""MLflow tracking: one run per training configuration, grouped by study, found by key.

Runs in the experiment ``tracking.experiment``:
- a *training run* per run key (:mod:`pipeline.identity`): size, train params, data,
  teacher, training code and length. Rerunning the same configuration (after a kill, or
  from another DVC experiment) finds the same run and continues it; a changed
  configuration gets a new run. Its params are the configuration, never changed once
  logged; runtime knobs (workers, GPUs) are tags. Training, ``evaluate`` and the FD of
  that generator all log here. Status RUNNING while it trains, FINISHED or FAILED after.
- a *study run* per study key (the training configuration without the size): the size
  runs nest under it; ``scaling`` logs the fit and the table there.
- a *stage run* per output of a data stage (tokenizer, teacher, classifier, encode): its
  metrics, named by the fingerprint of what it wrote.
- sweep runs (:mod:`pipeline.sweep`): one per Tune experiment, trials nested under it.

Every run is tagged with the git commit, the DVC experiment name when DVC runs one
(``$DVC_EXP_NAME``), and its key (``gat.run_key`` / ``gat.study_key``), so a run can be
found from ``dvc exp show`` (results/train/SIZE/metrics.json holds ``mlflow_run_id``) and
back; and with the machine and packages of the process that created it
(:func:`machine_tags`, the artifact ``environment.txt``): the same code and data give
other numbers on another kind of CPU (docs/RESULTS.md), so a run says where it was made.
Logging goes through :class:`MlflowClient`: no call flips a run's status.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.layout import LAYOUT, Layout

ROLE, SIZE, RUN_KEY, STUDY_KEY = "gat.role", "gat.size", "gat.run_key", "gat.study_key"
DVC_EXP_TAG, COMMIT_TAG = "dvc.exp_name", "mlflow.source.git.commit"
ENVIRONMENT_ARTIFACT = "environment.txt"  # every installed distribution, `name==version`
# The packages whose versions are tags of every run, besides torch (the rest:
# ENVIRONMENT_ARTIFACT).
TAGGED_PACKAGES = ("numpy", "ray", "mlflow", "diffusers", "torch-fidelity")
_FIND_OR_CREATE = threading.Lock()  # Tracker.find_or_create: no run created twice


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; the message names the URI and how to set it."""


def tracking_uri(params: Params, layout: Layout = LAYOUT) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the workspace's sqlite store
    (``sqlite:///<workspace>/mlflow.db``: a queued DVC experiment logs beside the others)."""
    return (params.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
            or f"sqlite:///{layout.mlflow_db}")


def source_tags(layout: Layout = LAYOUT) -> dict[str, str]:
    """Git commit (a DVC experiment's baseline), DVC experiment name, command line."""
    commit = os.environ.get("DVC_EXP_BASELINE_REV", "")
    if not commit:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=layout.root,
                              capture_output=True, text=True)
        commit = done.stdout.strip() if done.returncode == 0 else ""
    tags = {COMMIT_TAG: commit, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": os.environ.get("DVC_STAGE", "") or "python"}
    if os.environ.get("DVC_EXP_NAME"):
        tags[DVC_EXP_TAG] = os.environ["DVC_EXP_NAME"]
    return {k: v for k, v in tags.items() if v}


@functools.cache  # a process's machine and stack do not change: read once, not per run
def machine_tags() -> dict[str, str]:
    """The machine and stack of this process: CPU model, the widest vector ISA torch's
    kernels use here (``AVX512``, ``AVX2``...), CPU count, GPU, Python, torch and the
    versions of :data:`TAGGED_PACKAGES`, as ``gat.machine.*`` / ``gat.version.*`` tags."""
    import platform
    from importlib import metadata

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tags = {"gat.machine.cpu": cpu, "gat.machine.cpus": str(os.cpu_count()),
            "gat.machine.isa": torch.backends.cpu.get_cpu_capability(),
            "gat.machine.gpu": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                else "none"),
            "gat.version.python": platform.python_version(),
            "gat.version.torch": torch.__version__}  # names its build too: 2.14.1+cu130
    for name in TAGGED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"gat.version.{name}"] = metadata.version(name)
    return tags


@functools.cache
def installed_packages() -> str:
    """Every distribution installed in this interpreter's site-packages, ``name==version``
    per line, sorted (what ``pip freeze`` lists for a venv of released packages). Only
    site-packages: an imported setuptools puts its vendored copies (packaging, zipp, ...,
    older versions) on ``sys.path``, where ``metadata.distributions()`` would find them too."""
    import sysconfig
    from importlib import metadata

    paths = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    found = {(d.metadata["Name"] or "").lower(): d.version
             for d in metadata.distributions(path=paths)}
    return "".join(f"{name}=={version}\n" for name, version in sorted(found.items()) if name)


@dataclass
class Tracker:
    """One MLflow store and experiment. Picklable (Ray workers log through it)."""

    uri: str
    experiment: str
    layout: Layout = LAYOUT
    _client: Any = field(default=None, repr=False, compare=False)
    # what log_metrics(wait=False) queued: MLflow's RunOperations, waited for by flush()
    _queued: list = field(default_factory=list, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_queued": []}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri, registry_uri=self.uri)  # not the process's
        return self._client

    def check(self) -> None:
        """Refuse a store that cannot be reached or written, before any work starts."""
        hint = ("set tracking.uri in params.yaml or $MLFLOW_TRACKING_URI (empty: "
                f"sqlite:///{self.layout.mlflow_db})")
        if self.uri.startswith("sqlite:///"):
            folder = Path(self.uri.removeprefix("sqlite:///")).parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise TrackingError(f"MLflow store {self.uri}: folder {folder} is missing or "
                                    f"not writable; {hint}")
        elif self.uri.startswith(("http://", "https://")):
            import requests

            try:
                requests.get(self.uri.rstrip("/") + "/health", timeout=5).raise_for_status()
            except requests.RequestException as err:
                raise TrackingError(f"MLflow store {self.uri} cannot be reached ({err}); "
                                    f"start the server, or {hint}") from None
        try:
            self.experiment_id()
        except Exception as err:  # any backend error: name the URI, not a stack of MLflow
            raise TrackingError(f"MLflow store {self.uri}: {err}; {hint}") from None

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:"):
            # MLflow would put artifacts under ./mlruns of whatever cwd created the
            # experiment: pin them beside the database instead.
            artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=artifacts)
        except Exception:  # created meanwhile by another process
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.client.search_runs([self.experiment_id()], filter_string=query,
                                        max_results=1, order_by=["attributes.start_time ASC"])
        return found[0].info.run_id if found else None

    def find_or_create(self, key_tags: dict[str, str], name: str, parent: str | None = None,
                       params: dict[str, Any] | None = None,
                       tags: dict[str, str] | None = None) -> str:
        """The run with ``key_tags``, or a new one (``params`` logged once, at creation).
        One thread of a process at a time: a claim's runs side by side share a study run."""
        with _FIND_OR_CREATE:
            return self._find_or_create(key_tags, name, parent, params, tags)

    def _find_or_create(self, key_tags: dict[str, str], name: str, parent: str | None,
                        params: dict[str, Any] | None, tags: dict[str, str] | None) -> str:
        run_id = self.find(key_tags)
        if run_id is not None:
            return run_id
        all_tags = {**source_tags(self.layout), **machine_tags(), **(tags or {}),
                    **key_tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(self.experiment_id(), tags=all_tags,
                                        run_name=name).info.run_id
        if params:
            self.log_params(run_id, params)
        self.client.log_text(run_id, installed_packages(), ENVIRONMENT_ARTIFACT)
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0,
                    wait: bool = True) -> None:
        """Numeric entries of ``metrics`` at ``step`` (others are skipped). ``wait=False``:
        queued and sent by MLflow's thread (:meth:`flush` waits for it)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            queued = self.client.log_batch(run_id, metrics=items[i:i + 1000], synchronous=wait)
            if queued is not None:
                self._queued.append(queued)

    def flush(self) -> None:
        """Wait until every metric this tracker queued with ``wait=False`` is stored.

        On the operations ``log_batch`` returned, not ``mlflow.flush_async_logging()``: that
        flushes the process's default store, not this client's, and opening the default
        (``sqlite:///mlflow.db``) made a stray database in the working directory."""
        while self._queued:
            self._queued.pop(0).wait()

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | os.PathLike, folder: str | None = None
                     ) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_artifacts(self, run_id: str, path: str | os.PathLike, folder: str | None = None
                      ) -> None:
        self.client.log_artifacts(run_id, str(path), folder)

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING, FINISHED or FAILED. A nested run's parent (a study run) follows: RUNNING
        while any of its runs is, FINISHED once none is, so a study whose ``scaling`` never
        runs (a DVC target short of it) does not stay RUNNING."""
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status)
        parent = self.client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        if not parent:
            return
        if status == "RUNNING":
            self.client.update_run(parent, status="RUNNING")
            return
        running = self.client.search_runs(
            [self.experiment_id()], max_results=1,
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and "
                          "attributes.status = 'RUNNING'")
        if not running:
            self.client.set_terminated(parent, "FINISHED")

    def last_step(self, run_id: str, metric: str) -> int:
        """The highest step logged for ``metric`` (-1 when none)."""
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=-1)


@contextlib.contextmanager
def process_uris_kept() -> Iterator[None]:
    """Put MLflow's process-wide tracking and registry URIs (and their environment
    variables) back as they were. Ray Tune's ``MLflowLoggerCallback`` sets them to the
    sweep's store in the driver; left so, a child this process starts afterwards would
    inherit that store through ``$MLFLOW_TRACKING_URI``. (This project's own logging does
    not read them: every :class:`Tracker` names its tracking and registry URIs.)"""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: os.environ.get(k) for k in names}
    # None where the variable (put back below) or the default decides: restored "unset"
    tracking = mlflow.get_tracking_uri()
    registry = mlflow.get_registry_uri()
    kept_tracking = None if (not is_tracking_uri_set()
                             or tracking == env["MLFLOW_TRACKING_URI"]) else tracking
    kept_registry = None if registry in (tracking, env["MLFLOW_REGISTRY_URI"]) else registry
    try:
        yield
    finally:
        mlflow.set_tracking_uri(kept_tracking)
        mlflow.set_registry_uri(kept_registry)
        for k, v in env.items():  # after the setters: they export and unset the variables
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tracker(params: Params, layout: Layout = LAYOUT) -> Tracker:
    return Tracker(tracking_uri(params, layout), params.tracking.experiment, layout)


def worker_tracker(params: Params, driver: Tracker) -> Tracker:
    """The store Ray workers log to from their own nodes: ``tracking.worker_uri``, else the
    driver's (the same server, perhaps by another address: the driver may reach it through
    a tunnel at 127.0.0.1, workers by its cluster address)."""
    return Tracker(params.tracking.worker_uri or driver.uri, driver.experiment, driver.layout)


# ----------------------------------------------------------------------------- runs


def study_run(tr: Tracker, params: Params, study_key: str) -> str:
    """The study run of one study configuration (created on first use)."""
    return tr.find_or_create({ROLE: "study", STUDY_KEY: study_key},
                             f"{params.tracking.study_name} {study_key[:6]}")


def training_run(tr: Tracker, params: Params, size: str, run_key: str, study_key: str,
                 config: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """The run of one training configuration (its run key), nested under its study run.
    ``config`` (logged once as params, at creation) must be a function of the key."""
    parent = study_run(tr, params, study_key)
    return tr.find_or_create(
        {ROLE: "train", RUN_KEY: run_key}, f"{size} {run_key}", parent=parent, params=config,
        tags={SIZE: size, STUDY_KEY: study_key, **(tags or {})})


def stage_run(tr: Tracker, stage: str, fingerprint: str) -> str:
    """The run of one output of a data stage, named by the fingerprint of that output."""
    return tr.find_or_create({ROLE: stage, RUN_KEY: fingerprint[:16]},
                             f"{stage} {fingerprint[:6]}")


def record_stage(params: Params, stage: str, metrics: dict[str, Any], fingerprint: str,
                 layout: Layout = LAYOUT) -> None:
    """Write a data stage's metrics JSON (results/data/STAGE.json, atomically) and log them
    to the stage run of the output they describe."""
    from pipeline.files import write_json

    write_json(layout.data_metrics(stage), metrics)
    tr = tracker(params, layout)
    run_id = stage_run(tr, stage, fingerprint)
    tr.log_metrics(run_id, metrics)
    tr.set_tags(run_id, {k: v for k, v in metrics.items() if isinstance(v, str)})
    tr.set_status(run_id, "FINISHED")
