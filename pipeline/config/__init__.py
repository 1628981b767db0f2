"""The params file: its schema (:mod:`.schema`), the validating engine (:mod:`.coerce`), and
the trace of which keys each stage reads (:mod:`.trace`)."""

from pipeline.config.coerce import ParamsError
from pipeline.config.schema import (
    DEFAULT_PARAMS,
    DataParams,
    EvaluateParams,
    EvaluatorParams,
    Params,
    RuntimeParams,
    ScalingParams,
    StudyParams,
    SweepParams,
    TeacherParams,
    TokenizerParams,
    TrackingParams,
    TrainParams,
    load_params,
    parse_params,
    with_overrides,
)

__all__ = [
    "DEFAULT_PARAMS", "DataParams", "EvaluateParams", "EvaluatorParams", "Params",
    "ParamsError", "RuntimeParams", "ScalingParams", "StudyParams", "SweepParams",
    "TeacherParams", "TokenizerParams", "TrackingParams", "TrainParams", "load_params",
    "parse_params", "with_overrides",
]
