"""The HDF5 feature store: sets, shards, failure logs, a cached index, verification.

Layout (the README's "The feature store" says what each attr means)::

    STORE/<set>/set.json                        the configuration every video of the set shares
    STORE/<set>/part-<job>-<k>.h5               completed shards, one HDF5 group per video id
    STORE/<set>/part-<job>-<k>.h5.partial       the shard a live (or killed) job is writing
    STORE/<set>/part-<job>-<k>.h5.partial.lock  flock'ed by the writer while the partial is live
    STORE/<set>/failures-<job>.jsonl            one JSON line per failed video
    STORE/<set>/.index.npz                      cache: id -> shard (updated when shards change)

Each completed shard carries its own index, the root attribute ``vidfeat_index`` (ids, byte
layout of ``features``, ``written_at``), written before the shard is renamed: opening a set
reads one attribute per shard instead of every group. Shards written before that are scanned.

Crash safety: a shard is written under a ``.partial`` name, closed, fsync'ed and only then
renamed (``os.replace``) to its final name, so a kill -9 at any moment leaves every completed
shard readable; readers ignore partials. Distinct jobs write distinct file names, so many jobs
share a set without coordinating; the same id written twice (``--overwrite``, a duplicated job)
is resolved by the reader (largest ``written_at`` attr wins, ties to the largest shard name).

Liveness of a partial: the writer creates and ``flock``s the sidecar ``.lock`` *before* creating
the partial and removes it only *after* renaming the partial. So a partial whose lock can be
acquired (or that has no lock file) belongs to a dead job; :func:`cleanup_stale_partials` deletes
exactly those.

Untrusted stores: a store may have been written by someone else (shared folders on a cluster),
so readers open only regular files of the set folder (never through a symlink, never blocking on
a FIFO), follow no soft or external HDF5 link, read no dataset whose data lies outside its
shard (external raw storage, virtual datasets), check every array's size against set.json's
``feature_shape`` and a cap before allocating it, inflate compressed chunks only up to their
size, and parse JSON and dtype strings inside :class:`~vidfeat.errors.StoreError`
(:mod:`vidfeat.store.guard`). ``vidfeat store verify`` reports each of these as a problem.

Modules, each importing only those listed above it (no import cycles)::

    deflate     the one layout rule for chunks and filters; gzip chunks deflated on threads
                (ISA-L) for the writer and for extraction workers
    guard       what may be read from a store someone else wrote: regular files without
                following symlinks, hard links only, datasets inside their shard and within
                caps, bounded inflation, JSON and dtype strings parsed as StoreError
    paths       names (video ids, set and job names), fsync / temporary set.json / HDF5-open
                helpers, reading set.json, partial-shard locks and the cleanup of stale partials
    shardindex  the index each shard carries: encoding, decoding, the scan of older shards
    writer      ShardWriter, FailureLog and read_failures, the codec of HDF5 attrs
    rows        VideoSink: one video written row by row into the writer's shard (untrimmed
                grids: L rows, never all in memory)
    setindex    SetIndex: every copy of every video as numpy columns, cached in .index.npz
    reader      FeatureSet: the set index kept current, duplicates, the pread fast path
    sets        set identity (identity, is_informational, config comparison), score_classes
                (what names a set's scores) and FeatureStore
    shardcheck  checking one shard for verify (videos, NaN/Inf, its index against its groups),
                in worker processes for large stores
    verify      VerifyReport, verify_store, store_info and their text (format_verify,
                format_info)

Callers import from ``vidfeat.store``: every public name is re-exported here. The store may
import only :mod:`vidfeat.errors`, :mod:`vidfeat.provenance`, numpy and h5py (and the standard
library) — never extraction, networks, fusion or the command line, which all build on it.
"""

from vidfeat.provenance import file_sha256  # the store's name for the one in provenance
from vidfeat.store.paths import FEATURES as FEATURES
from vidfeat.store.paths import SET_JSON as SET_JSON
from vidfeat.store.paths import (
    StoreWarning,
    check_video_id,
    cleanup_stale_partials,
    partial_is_live,
)
from vidfeat.store.reader import INDEX_FILE as INDEX_FILE
from vidfeat.store.reader import INDEX_FORMAT as INDEX_FORMAT
from vidfeat.store.reader import INDEX_JSON as INDEX_JSON
from vidfeat.store.reader import FeatureSet, MissingVideoError
from vidfeat.store.rows import VideoSink
from vidfeat.store.sets import COMPARED_WHEN_BOTH as COMPARED_WHEN_BOTH
from vidfeat.store.sets import IMPLICIT_DEFAULTS as IMPLICIT_DEFAULTS
from vidfeat.store.sets import INFORMATIONAL_SUFFIXES as INFORMATIONAL_SUFFIXES
from vidfeat.store.sets import FeatureStore, identity, is_informational, score_classes
from vidfeat.store.shardindex import SHARD_INDEX_ATTR as SHARD_INDEX_ATTR
from vidfeat.store.verify import (
    VerifyReport,
    format_info,
    format_verify,
    store_info,
    verify_store,
)
from vidfeat.store.writer import FLOAT16_FROM as FLOAT16_FROM
from vidfeat.store.writer import FailureLog, ShardWriter, read_failures

__all__ = [
    "FailureLog",
    "FeatureSet",
    "FeatureStore",
    "MissingVideoError",
    "ShardWriter",
    "StoreWarning",
    "VerifyReport",
    "VideoSink",
    "check_video_id",
    "cleanup_stale_partials",
    "format_info",
    "file_sha256",
    "format_verify",
    "identity",
    "is_informational",
    "partial_is_live",
    "read_failures",
    "score_classes",
    "store_info",
    "verify_store",
]
