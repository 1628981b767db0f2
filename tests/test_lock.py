"""requirements.lock: the whole stack's versions, which scripts/setup.sh installs under.

The direct pins of requirements.txt must agree with it (pip refuses a conflict, late and
loudly), and the venv running these tests must be what it says: every locked distribution
installed at its locked version.
"""

from __future__ import annotations

import re

from pipeline.tracking import installed_packages
from tests.helpers import REPO


def _normal(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path) -> dict[str, str]:
    """name (normalized) -> version of every ``name==version`` line (extras, comments
    dropped)."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#;]+)", line.strip())
        if match:
            pins[_normal(match[1])] = match[2]
    return pins


def test_the_direct_pins_agree_with_the_lock():
    lock, direct = _pins(REPO / "requirements.lock"), _pins(REPO / "requirements.txt")
    assert len(lock) > 100 and {"torch", "numpy", "pillow", "ray"} <= set(lock)
    assert direct and set(direct) <= set(lock), set(direct) - set(lock)
    assert {name: lock[name] for name in direct} == direct


def test_the_venv_is_the_locked_stack():
    """What MLflow runs record as their environment (``installed_packages``) is the lock,
    also with setuptools imported (its vendored, older packaging and zipp then lie on
    sys.path)."""
    import setuptools  # noqa: F401

    lock = _pins(REPO / "requirements.lock")
    installed = {_normal(name): version for name, version in (
        line.split("==") for line in installed_packages().splitlines())}
    differ = {name: (want, installed.get(name)) for name, want in lock.items()
              if installed.get(name) != want}
    assert not differ, (f"installed versions differ from requirements.lock (locked, "
                        f"installed): {differ}: run `bash scripts/setup.sh`")
