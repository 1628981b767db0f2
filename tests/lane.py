"""A third lane for the suite: end-to-end tests made only of subprocesses (stages, `dvc`)
run in a thread of their own from the end of collection, beside the foreground tests and
the background study builds (tests/conftest.py); their test items, ordered last, wait for
them and report their outcome, traceback and all.

    @lane_test()                      # or lane_test(needs_study=True): waits for the study
    def test_something(work: Path):   # work: a fresh folder of its own
        ...                           # the test's body, assertions as usual

``lane_test(needs_claims=True)``: the scenario awaits ``lane.claims_study()`` (the tiny
study with every claim run; only in tests/stages/test_claims.py, whose tests start that
build). The scenarios run one after another, those that need no study first, those that
need the claims last. Run alone (the lane was not started: ``pytest --collect-only`` then
a call, a debugger), the test runs its scenario in place.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

Scenario = Callable[[Path], None]
_futures: dict[Scenario, Future] = {}


def tiny_study() -> Path:
    """The tiny study, awaited (tests/conftest.py puts its own function here: call it as
    ``lane.tiny_study()``)."""
    raise RuntimeError("tests/conftest.py sets lane.tiny_study")


def claims_study() -> tuple[Path, Path, str]:
    """The claims study, awaited (set by tests/conftest.py, as :func:`tiny_study`)."""
    raise RuntimeError("tests/conftest.py sets lane.claims_study")


def lane_test(needs_study: bool = False, needs_claims: bool = False
              ) -> Callable[[Scenario], Callable[[], None]]:
    def wrap(scenario: Scenario) -> Callable[[], None]:
        def test() -> None:
            future = _futures.get(scenario)
            if future is None:  # the lane was not started: run it here
                future = Future()
                _run(scenario, future)
            future.result()

        test.lane_scenario = scenario  # type: ignore[attr-defined]
        test.lane_needs_study = needs_study or needs_claims  # type: ignore[attr-defined]
        test.lane_needs_claims = needs_claims  # type: ignore[attr-defined]
        test.__doc__ = scenario.__doc__
        return test
    return wrap


def _run(scenario: Scenario, future: Future) -> None:
    work = Path(tempfile.mkdtemp(prefix="gat-lane-"))
    try:
        future.set_result(scenario(work))
    except BaseException as err:  # pytest.fail/skip too: raised where the test awaits it
        future.set_exception(err)
    else:
        shutil.rmtree(work, ignore_errors=True)


def _resolve_lazy_names() -> None:
    """diffusers and transformers resolve their top-level names on first use, and not
    thread-safely: a scenario's `from diffusers import AutoencoderKL` raced a foreground
    test's and failed with ImportError (seen once). Resolve them here, before the thread."""
    from diffusers import AutoencoderKL, ConfigMixin, DiffusionPipeline, ModelMixin  # noqa: F401
    from transformers import Dinov2Config, Dinov2Model  # noqa: F401


def start(tests: list[Callable]) -> None:
    """Run the scenarios of these lane tests in a daemon thread, those that need no study
    first, those that need the claims last."""
    _resolve_lazy_names()
    ordered = sorted(tests, key=lambda t: (t.lane_needs_study, t.lane_needs_claims))
    futures = [(t.lane_scenario, Future()) for t in ordered]
    for scenario, future in futures:
        _futures[scenario] = future

    def run_all() -> None:
        for scenario, future in futures:
            _run(scenario, future)

    threading.Thread(target=run_all, name="lane", daemon=True).start()
