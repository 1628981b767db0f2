"""The params file: its schema (:mod:`.schema`), the validating engine (:mod:`.coerce`), and
the trace of which keys each stage reads (:mod:`.trace`)."""

from pipeline.config.coerce import ParamsError
from pipeline.config.schema import (
    CLAIM_NAMES,
    DEFAULT_PARAMS,
    ClaimsParams,
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
    "CLAIM_NAMES",
    "DEFAULT_PARAMS",
    "ClaimsParams",
    "DataParams",
    "EvaluateParams",
    "EvaluatorParams",
    "Params",
    "ParamsError",
    "RuntimeParams",
    "ScalingParams",
    "StudyParams",
    "SweepParams",
    "TeacherParams",
    "TokenizerParams",
    "TrackingParams",
    "TrainParams",
    "load_params",
    "parse_params",
    "with_overrides",
]
