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
