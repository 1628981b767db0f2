"""Ray start-up shared by the training, sweep and test code."""

from __future__ import annotations

import os

import ray


def init_ray(num_cpus: int | None = None) -> ray.client_builder.BaseContext | None:
    """Join ``$RAY_ADDRESS`` if set (a cluster), else start a local Ray bound to 127.0.0.1.
    Returns ``ray.init``'s context (None when this process had joined or started one).

    The dashboard (web view and state API, for watching a local run) is bound to loopback
    only; ``GAT_RAY_DASHBOARD=0`` starts none (each stage starts its own Ray, and its
    dashboard cost about 3 CPU-s of the ~9 a start takes on 2 cores: the test suite sets
    it). The local Ray's node address is 127.0.0.1 because ``pipeline`` sets Ray's own
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported (see
    ``pipeline._ray_on_loopback``), as every stage does: no private ``ray.init`` argument.
    """
    if ray.is_initialized():
        return None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Train paces reports by this poll; its default makes short CPU runs crawl.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if os.environ.get("RAY_ADDRESS"):  # a user's cluster: its own auth settings stand
        return ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # our own, loopback-only Ray
    return ray.init(
        address="local",  # never join a stale cluster recorded in /tmp/ray by `ray start`
        num_cpus=num_cpus,
        include_dashboard=os.environ.get("GAT_RAY_DASHBOARD", "1") != "0",
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        configure_logging=False,
    )
