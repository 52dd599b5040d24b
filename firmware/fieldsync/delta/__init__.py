"""Delta sync: Fleece's JSON delta format (create, apply) and LiteCore's rule for using it."""

from .errors import DeltaError
from .jsondelta import (
    MAX_DELTA_SIZE_RATIO,
    MIN_BODY_SIZE_FOR_DELTA,
    apply_delta,
    apply_delta_json,
    create_delta,
    create_delta_json,
    json_equal,
    revision_delta,
)
from .stringdelta import (
    DEFAULT_MIN_STRING_DIFF_LENGTH,
    DEFAULT_TEXT_DIFF_TIMEOUT,
    apply_string_ops,
    create_string_ops,
)

__all__ = [
    "DEFAULT_MIN_STRING_DIFF_LENGTH",
    "DEFAULT_TEXT_DIFF_TIMEOUT",
    "MAX_DELTA_SIZE_RATIO",
    "MIN_BODY_SIZE_FOR_DELTA",
    "DeltaError",
    "apply_delta",
    "apply_delta_json",
    "apply_string_ops",
    "create_delta",
    "create_delta_json",
    "create_string_ops",
    "json_equal",
    "revision_delta",
]
