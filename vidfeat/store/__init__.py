"""The HDF5 feature store (being split into modules; for now all of it lives in ``reader``)."""

# format constants, module attributes of vidfeat.store before it became a package
from vidfeat.store.reader import COMPARED_WHEN_BOTH as COMPARED_WHEN_BOTH
from vidfeat.store.reader import FEATURES as FEATURES
from vidfeat.store.reader import FLOAT16_FROM as FLOAT16_FROM
from vidfeat.store.reader import IMPLICIT_DEFAULTS as IMPLICIT_DEFAULTS
from vidfeat.store.reader import INDEX_FORMAT as INDEX_FORMAT
from vidfeat.store.reader import INDEX_JSON as INDEX_JSON
from vidfeat.store.reader import INFORMATIONAL_SUFFIXES as INFORMATIONAL_SUFFIXES
from vidfeat.store.reader import SET_JSON as SET_JSON
from vidfeat.store.reader import (
    FailureLog,
    FeatureSet,
    FeatureStore,
    MissingVideoError,
    ShardWriter,
    StoreWarning,
    VerifyReport,
    check_video_id,
    cleanup_stale_partials,
    file_sha256,
    format_info,
    format_verify,
    identity,
    is_informational,
    partial_is_live,
    read_failures,
    store_info,
    verify_store,
)

__all__ = [
    "FailureLog",
    "FeatureSet",
    "FeatureStore",
    "MissingVideoError",
    "ShardWriter",
    "StoreWarning",
    "VerifyReport",
    "check_video_id",
    "cleanup_stale_partials",
    "format_info",
    "file_sha256",
    "format_verify",
    "identity",
    "is_informational",
    "partial_is_live",
    "read_failures",
    "store_info",
    "verify_store",
]
