"""The pipeline: what the DVC stages share (see docs/ARCHITECTURE.md).

``PLUMBING`` names the modules that can never change what a stage computes: they parse and
validate params, know paths, write files atomically, give stages their command line,
record to MLflow, start Ray, read and write run state on its storage, and check that the
Ray cluster can serve a run. Stages do not declare them as DVC dependencies (editing
MLflow logging must not retrain a model), and the check of dvc.yaml against the code
(tests/stages/test_dvc_declarations.py) does not follow imports through them. Every other project
module a stage imports must be declared in its ``deps``.
"""

PLUMBING = (
    "pipeline", "pipeline.config", "pipeline.config.coerce", "pipeline.config.schema",
    "pipeline.config.trace", "pipeline.layout", "pipeline.files", "pipeline.stage",
    "pipeline.tracking", "pipeline.ray_utils", "pipeline.config.profiles", "pipeline.cli",
    "pipeline.storage", "pipeline.cluster",
)


def _ray_on_loopback() -> None:
    """Keep a Ray of this machine on 127.0.0.1 (``pipeline.ray_utils.init_ray``).

    By default Ray takes the machine's outward address as a node's (rewriting 127.0.0.1 in
    a cluster address to it): a local Ray would listen on every interface, and a driver
    could not join a cluster bound to loopback (tests/multinode.py). With Ray's
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment when Ray is first imported
    it takes 127.0.0.1 as this machine's address instead (``ray.util.get_node_ip_address``),
    with no private ``ray.init`` argument. Set here, where every stage
    starts, unless ``$RAY_ADDRESS`` names another machine's cluster.
    """
    import os

    host = os.environ.get("RAY_ADDRESS", "").rpartition(":")[0]
    if host in ("", "127.0.0.1", "localhost"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


_ray_on_loopback()
