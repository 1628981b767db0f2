"""The frozen-network actor pool survives an actor killed mid-stage: Ray restarts it and
retries its task, and the results are those of an undisturbed run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.ray_pool import map_on_pool

pytestmark = pytest.mark.slow


def _dies_once(marker: Path):
    """make(device) -> work: task 3 kills its actor's process the first time it runs."""

    def make(device: str):
        def work(task: int) -> int:
            if task == 3 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # the actor process dies mid-task, as on a lost node
            return 10 * task

        return work

    return make


def test_an_actor_killed_mid_stage_is_restarted_and_its_task_retried(ray_cluster, tmp_path):
    marker = tmp_path / "died"
    results = map_on_pool(_dies_once(marker), list(range(6)), 2, False, 1.0, "pool test")
    assert marker.exists()  # an actor did die
    assert results == [10 * i for i in range(6)]


def test_without_restarts_the_killed_actor_fails_the_stage(ray_cluster, tmp_path):
    from ray.exceptions import RayActorError

    with pytest.raises(RayActorError):
        map_on_pool(_dies_once(tmp_path / "died"), list(range(6)), 2, False, 1.0,
                    "pool test", restarts=0)
