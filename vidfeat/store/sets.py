"""Set identity and the folder of sets.

``STORE/<set>/set.json`` records the configuration every video of a set shares: among it
``classes``, the class index of the videos' labels (``class_index`` attrs), and
``score_classes``, the names of the ``scores`` columns (:func:`score_classes`).
:func:`identity` keeps the keys that determine the arrays (provenance keys,
:func:`is_informational`, dropped); :class:`FeatureStore` lists sets, creates one or checks that
a run matches it (:meth:`FeatureStore.ensure_set`) and opens readers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError, StoreError
from vidfeat.store.paths import (
    SET_JSON,
    StoreWarning,
    _check_set_name,
    _fsync_path,
    _read_set_json,
    _write_all,
    _write_json_tmp,
)
from vidfeat.store.reader import FeatureSet

# set.json keys that record provenance rather than what the arrays are. They never refuse a
# resume or a fusion run: library versions only warn (features may differ slightly), paths and
# ``*_info`` records (where a checkpoint lived, the run's training config) are not compared.
INFORMATIONAL_SUFFIXES = ("_version", "_path", "_info")
# Identity keys with a meaning when absent: a set written before the key existed (or by a run
# that did not set it) compares as if it had recorded this value. ``storage_dtype`` is only
# written for --float16 runs; without it arrays are stored in the extractor's own dtype. Sets
# written before ``--precision`` (and sets of no network) were computed in float32.
IMPLICIT_DEFAULTS: dict[str, Any] = {"storage_dtype": "native", "precision": "fp32"}
# Identity keys compared only when both the set and the run record them: a set records the
# class list of the run that created it, and a later run over a list without labels has none;
# sets written before ``score_classes`` existed name their scores' columns by ``classes``.
COMPARED_WHEN_BOTH = frozenset({"classes", "score_classes"})


def score_classes(config: dict) -> list[str] | None:
    """The names of a set's ``scores`` columns, in order: ``score_classes`` (the network's
    classes; a set's ``classes`` are its list's labels, which may be other classes), else
    ``classes`` (a set written before ``score_classes`` existed: its scores are over its class
    index). None when the set names neither."""
    names = config.get("score_classes", config.get("classes"))
    return [str(c) for c in names] if isinstance(names, list) else None


# --------------------------------------------------------------------------- config (set.json)


def is_informational(key: str) -> bool:
    """True for set.json keys that describe provenance, not the stored arrays (see
    ``INFORMATIONAL_SUFFIXES``)."""
    return key.endswith(INFORMATIONAL_SUFFIXES)


def identity(config: dict) -> dict:
    """The keys of a set configuration that determine its arrays (provenance dropped)."""
    return {k: v for k, v in config.items() if not is_informational(k)}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _normalise_config(config: dict) -> dict:
    """What the config looks like after a trip through set.json (tuples -> lists, numpy ->
    python), so comparisons are between like and like."""
    if not isinstance(config, dict):
        raise ConfigError(f"a set configuration must be a dict, not {type(config).__name__}")
    try:
        return json.loads(json.dumps(config, default=_json_default, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"set configuration is not JSON-serialisable ({exc}); pass plain numbers, strings, "
            "lists and dicts"
        ) from exc


def _fmt_value(v: Any, limit: int = 80) -> str:
    text = json.dumps(v, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff(key: str, stored: Any, asked: Any, missing: Any) -> list[tuple[str, Any, Any]]:
    """Differences as (dotted key, stored, asked); nested dicts are compared key by key so the
    message names e.g. ``run_config.lr`` rather than dumping the whole dict."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(stored) | set(asked)):
            out += _diff(f"{key}.{k}", stored.get(k, missing), asked.get(k, missing), missing)
        return out
    return [] if stored == asked else [(key, stored, asked)]


class FeatureStore:
    """A folder of feature sets, one sub-folder per set (``STORE/<set>/set.json`` + shards)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    def sets(self) -> list[str]:
        """Names of the sets present (sub-folders holding a ``set.json``), sorted. A set.json
        that is not a regular file (a symlink, a FIFO) still names a set: opening it is then
        refused with the reason, never read."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and os.path.lexists(p / SET_JSON)
        )

    def set_dir(self, name: str) -> Path:
        """The folder of set ``name`` (not created)."""
        return self.root / _check_set_name(name)

    def ensure_set(self, name: str, config: dict) -> dict:
        """Create set ``name`` with ``config`` or check that the existing set matches it.

        ``set.json`` is created atomically (temp file + ``os.link``, which fails if another
        process won the race; that process's file is then compared like any existing one), so
        concurrent jobs starting with the same config all succeed.

        The comparison is symmetric: a key present on only one side differs from its absence
        (a float16 set refuses a float32 run and the other way round), and every differing key
        raises one :class:`ConfigError` naming them with both values. Exceptions: informational
        keys (:func:`is_informational`) never refuse (a ``*_version`` difference warns,
        ``*_path`` and ``*_info`` are not compared); a missing key of ``IMPLICIT_DEFAULTS``
        compares as its default (no ``storage_dtype`` means ``"native"``); keys of
        ``COMPARED_WHEN_BOTH`` (``classes``, ``score_classes``) are compared only when both
        sides have them.
        Returns the stored configuration.
        """
        d = self.set_dir(name)
        asked = _normalise_config(config)
        path = d / SET_JSON
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create set folder {d} ({exc}); check the --store path"
            ) from exc
        if not path.exists():
            if self._create_set_json(path, asked):
                return asked
        stored = self._read_when_complete(path, name)
        self._compare(name, stored, asked)
        return stored

    @staticmethod
    def _read_when_complete(path: Path, name: str) -> dict:
        # Only the no-hard-link fallback can expose a set.json still being written; give its
        # writer a moment before calling the file broken.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                return _read_set_json(path, name)
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _create_set_json(path: Path, config: dict) -> bool:
        """True if this call created ``path``; False if another process got there first."""
        try:
            tmp = _write_json_tmp(path, config)
        except OSError as exc:
            raise StoreError(
                f"cannot write {path} ({exc}); check permissions / free space"
            ) from exc
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise StoreError(f"cannot create {path} ({exc})") from exc
            # filesystem without hard links: O_EXCL still decides one winner
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                _write_all(fd, tmp.read_bytes())
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _fsync_path(path.parent, directory=True)
        return True

    @staticmethod
    def _compare(name: str, stored: dict, asked: dict) -> None:
        missing = "<absent>"
        diffs: list[tuple[str, Any, Any]] = []
        version_diffs: list[tuple[str, Any, Any]] = []
        for key in sorted(set(stored) | set(asked)):
            if is_informational(key) and not key.endswith("_version"):
                continue
            if key in COMPARED_WHEN_BOTH and not (key in stored and key in asked):
                continue
            default = IMPLICIT_DEFAULTS.get(key, missing)
            d = _diff(key, stored.get(key, default), asked.get(key, default), missing)
            (version_diffs if key.endswith("_version") else diffs).extend(d)
        if version_diffs:
            txt = ", ".join(
                f"{k}={_fmt_value(a)} (set has {_fmt_value(s)})" for k, s, a in version_diffs
            )
            warnings.warn(
                f"set {name!r} was written with other library versions; this run has {txt}. "
                "Features may differ slightly; use --name for a separate set if that matters",
                StoreWarning,
                stacklevel=3,
            )
        if diffs:
            was = ", ".join(f"{k}={_fmt_value(s)}" for k, s, _ in diffs)
            now = ", ".join(f"{k}={_fmt_value(a)}" for k, _, a in diffs)
            raise ConfigError(
                f"set {name!r} was written with {was}, this run asks {now}; "
                "use --name for a new set or a new store"
            )

    def open_set(self, name: str, *, read_only: bool = False) -> FeatureSet:
        """A reader for set ``name``; :class:`StoreError` listing the sets present if absent.
        ``read_only=True``: never write the set's index cache (see :class:`FeatureSet`)."""
        d = self.set_dir(name)
        if not os.path.lexists(d / SET_JSON):
            present = self.sets()
            have = ", ".join(present) if present else "none"
            raise StoreError(
                f"no feature set {name!r} in store {self.root} (sets present: {have}); "
                f"extract it first (vidfeat extract ... --store {self.root} --name {name}) "
                "or pick one of the sets present"
            )
        return FeatureSet(d, read_only=read_only)
