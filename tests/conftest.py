"""Shared fixtures: one real Ray cluster per test session, real MLflow sqlite stores, the
tiny study and its claims built once a session in a background thread; the lane's
end-to-end tests (tests/lane.py) started in a thread of their own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per process, this one and every stage it starts: the tiny study trains
# in the background while tests run, and two processes whose OpenMP threads spin-wait for
# each other on 2 cores ran some tests 20-60x slower; one thread each ran them at their
# idle speed (measured: tests/gat/test_train.py's two slowest, beside a 2-thread burner).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray takes the machine's outward address as a node's (and rewrites 127.0.0.1 in a cluster
# address to it) unless this is 0 when it is imported: then 127.0.0.1 is this machine's
# address, so local Ray really listens on loopback only, and a driver can join the
# loopback-bound multi-node cluster of tests/multinode.py.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# No Ray dashboard in the session's Ray and every stage's (pipeline.ray_utils.init_ray):
# nobody watches them, and each cost ~3 CPU-s of the ~9 a Ray start takes; the suite starts
# Ray dozens of times on 2 cores (tests/pipeline/test_cluster.py tests the default, on).
os.environ.setdefault("GAT_RAY_DASHBOARD", "0")
# Processes the suite starts and never uses: the workers Ray prestarts at each start (Ray
# Train's actors carry a runtime_env, so none of them takes one) and Ray Train's preemption
# watcher (one per training run; no test drains a node). Measured: docs/TESTS.md and
# benchmarks/ray_train_overhead.py.
os.environ.setdefault("RAY_enable_worker_prestart", "0")
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster bound to 127.0.0.1, shared by the whole session."""
    import ray

    from pipeline.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    """A fresh MLflow sqlite store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# The two studies that take most of the suite's time are built in one background thread,
# started when collection ends, while the tests that do not need them run: most of the
# suite's wall time is waiting (Ray start-up, subprocesses), not CPU. The tests that need
# the tiny study run after the others, those that need its claims last: the claims build
# on their own copy while the tiny study's tests run.
CLAIMS_TESTS = "tests/stages/test_claims.py"
# Where the tiny study's dvc.lock and results/ are copied once built, when set: the docs
# check builds the same study again, and tests/study_diff.py compares the two.
STUDY_RECORD = "GAT_STUDY_RECORD"
_studies: dict[str, Future] = {}
_running: list[subprocess.Popen] = []
# When each background build and each group of tests began and ended (time.monotonic()),
# printed after the run: the suite's critical path (what to shorten to make it faster).
_timeline: dict[str, list[float]] = {}


def _lane_test(item: pytest.Item):
    """The test function of a lane test (tests/lane.py), else None."""
    function = getattr(item, "function", None)
    return function if hasattr(function, "lane_scenario") else None


def _needs_tiny_study(item: pytest.Item) -> bool:
    lane_test = _lane_test(item)
    if lane_test is not None:
        return lane_test.lane_needs_study
    return "tiny_study" in getattr(item, "fixturenames", ())


def _order(item: pytest.Item) -> int:
    """0: needs no study; 1: needs the tiny study; 2: needs its claims; 3: a lane test
    (it waits for its scenario, which runs beside all the others)."""
    if _lane_test(item) is not None:
        return 3
    return 2 if item.nodeid.startswith(CLAIMS_TESTS) else int(_needs_tiny_study(item))


@pytest.hookimpl(trylast=True)  # after -k / -m deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_order)  # stable: within each group the order stays
    _group_of.update((item.nodeid, GROUPS[_order(item)]) for item in items)
    from tests import lane
    from tests.helpers import FASHION

    lane_tests = [t for t in map(_lane_test, items) if t is not None]
    if config.option.collectonly:
        return
    if FASHION.exists() and any(_needs_tiny_study(i) for i in items):
        _start_studies(config, items)
    lane.tiny_study = lambda: _study("tiny")
    lane.claims_study = lambda: _study("claims")
    # GAT_TEST_LANE=0: each lane test runs its scenario in place, one after another (to
    # measure each test's CPU alone: GAT_TEST_CPU above).
    if lane_tests and os.environ.get("GAT_TEST_LANE", "1") != "0":
        lane.start(lane_tests)  # after the studies' futures exist: a scenario may await one


def _start_studies(config, items) -> None:
    """The tiny study in a daemon thread; its claims in another, started as soon as the
    tiny study's ladder and report are built (its sweep, last, then runs beside them)."""
    base = Path(tempfile.mkdtemp(prefix="gat-studies-"))
    claims = base / "claims" if any(i.nodeid.startswith(CLAIMS_TESTS) for i in items) else None
    _studies["tiny"], _studies["claims"] = Future(), Future()

    def build(name: str, make: Callable[[], object]) -> None:  # daemon threads: an
        # interrupted session does not wait for them
        _timeline[f"build {name} study"] = [time.monotonic()]
        try:
            _studies[name].set_result(make())
        except BaseException as err:  # pytest.fail/skip too: raised where it is awaited
            _studies[name].set_exception(err)
        _timeline[f"build {name} study"].append(time.monotonic())

    claims_started = threading.Event()

    def start_claims() -> None:
        claims_started.set()
        threading.Thread(target=build, args=("claims", lambda: _claims_study(claims)),
                         name="claims study", daemon=True).start()

    def build_tiny() -> None:
        build("tiny", lambda: _tiny_study(base / "study", claims,
                                          start_claims if claims else None))
        if not claims:
            _studies["claims"].set_result(None)
        elif not claims_started.is_set():  # the tiny study failed before its ladder
            _studies["claims"].set_exception(_studies["tiny"].exception())

    threading.Thread(target=build_tiny, name="tiny study", daemon=True).start()

    def cleanup() -> None:
        from tests.multinode import kill_tree

        for proc in _running:  # a study still building when the session ends
            kill_tree(proc.pid)
        shutil.rmtree(base, ignore_errors=True)

    config.add_cleanup(cleanup)


GROUPS = ("tests that need no study", "tests of the tiny study", "tests of its claims",
          "waiting for the lane's end-to-end tests")
_group_of: dict[str, str] = {}


# GAT_TEST_CPU=1: the whole machine's busy CPU-s (/proc/stat) during each test, the largest
# printed after the run. The suite is bound by CPU on 2 cores (docs/TESTS.md), so this, not
# wall time, says which tests cost the most; it counts whatever else runs meanwhile (the
# background builds, the lane): run a subset alone to attribute it (-k, a folder).
CPU_ENV = "GAT_TEST_CPU"
_cpu: dict[str, float] = {}


def _busy_cpu_s() -> float:
    """Busy CPU-s of the whole machine since boot (Linux; 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _, _, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def pytest_runtest_logstart(nodeid, location):
    """Marks the span of each group of :func:`_order`: its first test's start..."""
    if nodeid in _group_of:
        _timeline.setdefault(_group_of[nodeid], [time.monotonic(), time.monotonic()])
    if os.environ.get(CPU_ENV) == "1":
        _cpu[nodeid] = -_busy_cpu_s()


def pytest_runtest_logfinish(nodeid, location):
    """... to its last test's end."""
    if nodeid in _group_of:
        _timeline[_group_of[nodeid]][1] = time.monotonic()
    if nodeid in _cpu:
        _cpu[nodeid] += _busy_cpu_s()


def pytest_terminal_summary(terminalreporter):
    """Each group's and background build's span, in seconds from the first test's start;
    with GAT_TEST_CPU=1 the 25 tests the machine spent the most CPU-s in."""
    if _cpu:
        terminalreporter.section(f"busy CPU-s of the machine during each test ({CPU_ENV}=1)")
        terminalreporter.write_line(f"{sum(_cpu.values()):8.1f}  all {len(_cpu)} tests")
        for nodeid, cpu in sorted(_cpu.items(), key=lambda kv: -kv[1])[:25]:
            terminalreporter.write_line(f"{cpu:8.1f}  {nodeid}")
    if not _timeline:
        return
    zero = min(span[0] for span in _timeline.values())
    terminalreporter.section("timeline (s from the first test)")
    for name, span in sorted(_timeline.items(), key=lambda kv: kv[1][0]):
        end = f"{span[1] - zero:7.0f}" if len(span) == 2 else "   (unfinished)"
        terminalreporter.write_line(f"{span[0] - zero:7.0f} .. {end}  {name}")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float | None = None
         ) -> subprocess.CompletedProcess:
    """subprocess.run, its process tree killed if the session ends first. It stays in
    pytest's process group: whatever stops the session's group stops it too."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _running.append(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _running.remove(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _tiny_study(work: Path, claims_copy: Path | None,
                on_ladder: Callable[[], None] | None = None) -> Path:
    """A copy of the repo where the README's first command, ``bash scripts/repro.sh``, ran
    the tiny profile, sweep included, with the params keys every stage read traced into
    ``params_trace(work)``. It runs in two steps, ``repro.sh report`` (the ladder and its
    report) and ``repro.sh`` (the sweep, which nothing else needs): between them the
    study is copied to ``claims_copy`` and ``on_ladder`` called (the claims build starts).

    The copy's ``.venv`` links to the venv running the tests (set up by scripts/setup.sh, so
    the script's setup step finds it complete), and the venv is not on PATH: the script
    itself must make ``python`` in dvc.yaml's commands the venv's.
    """
    from pipeline.config.trace import TRACE_ENV
    from tests.helpers import copy_repo, copy_study, dvc_env, params_trace

    work.mkdir(parents=True)
    copy_repo(work)
    shutil.copy(work / "profiles" / "tiny.yaml", work / "params.yaml")
    env, venv = dvc_env(), Path(sys.executable).parent
    # Every params key each stage's processes read (tests/stages/test_dvc_declarations.py).
    env[TRACE_ENV] = str(params_trace(work))
    params_trace(work).mkdir()
    marker = venv.parent / ".requirements.installed"
    wanted = "".join((work / f).read_text() for f in ("requirements.txt", "requirements.lock"))
    if marker.exists() and marker.read_text() != wanted:
        # setup.sh in the copy would reinstall into this venv, pointing it at the copy
        pytest.fail(f"{venv.parent} was set up for other requirements: run "
                    "`bash scripts/setup.sh`, then the tests again")
    if marker.exists():  # a venv made by setup.sh
        (work / ".venv").symlink_to(venv.parent)
        env["PATH"] = ":".join(d for d in env["PATH"].split(":") if Path(d) != venv)
        repro = ["bash", "scripts/repro.sh"]
        commands = [["git", "init", "-q"], [*repro, "report"], repro]
    else:
        repro = ["dvc", "repro"]
        commands = [["git", "init", "-q"], ["dvc", "init", "-q", "-f"], [*repro, "report"],
                    repro]
    for cmd in commands:
        result = _run(cmd, work, env)
        assert result.returncode == 0, f"{cmd}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        if cmd[-1] == "report" and claims_copy is not None:
            copy_study(work, claims_copy / "study")
            if on_ladder is not None:
                on_ladder()
    if os.environ.get(STUDY_RECORD):  # what tests/study_diff.py compares (scripts/test.sh)
        record = Path(os.environ[STUDY_RECORD])
        shutil.copytree(work / "results", record / "results")
        shutil.copy(work / "dvc.lock", record / "dvc.lock")
    return work


def _claims_study(work: Path) -> tuple[Path, Path, str]:
    """The tiny study's copy in ``work/study`` with every claim switched on and `dvc repro
    report` run, the params keys traced into ``work/trace``: (study, trace, its stdout)."""
    from pipeline import claims
    from pipeline.config.trace import TRACE_ENV
    from tests.helpers import dvc_env

    study, trace = work / "study", work / "trace"
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["claims"]["run"] = list(claims.CLAIMS)
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    trace.mkdir()
    done = _run(["dvc", "repro", "report"], study, {**dvc_env(), TRACE_ENV: str(trace)}, 1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return study, trace, done.stdout


def _study(name: str):
    from tests.helpers import FASHION

    if not FASHION.exists():
        pytest.skip("needs dataset-fashion-mnist (bash scripts/setup.sh installs it)")
    if name not in _studies or (name == "claims" and _studies[name].result() is None):
        raise RuntimeError(f"the {name} study is built only for the tests collected with "
                           f"it ({CLAIMS_TESTS} for claims): see tests/conftest.py")
    return _studies[name].result()


@pytest.fixture(scope="session")
def tiny_study() -> Path:
    """The tiny profile's study after ``bash scripts/repro.sh`` (:func:`_tiny_study`)."""
    return _study("tiny")


@pytest.fixture(scope="session")
def claims_study(tiny_study) -> tuple[Path, Path, str]:
    """The tiny study with every claim run (:func:`_claims_study`): (study, trace, stdout)."""
    return _study("claims")


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """A generator (2 real training steps), a tokenizer and a classifier directory, tiny,
    saved as their stages save them (tests/eval_helpers.py), built once a session."""
    from tests.eval_helpers import save_classifier_dir, save_generator_dir, save_tokenizer_dir

    root = tmp_path_factory.mktemp("parts")
    return {"generator": save_generator_dir(root / "generator"),
            "tokenizer": save_tokenizer_dir(root / "tokenizer"),
            "classifier": save_classifier_dir(root / "classifier")}
