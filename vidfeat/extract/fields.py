"""Flow fields: optical flow on the grid's frame pairs, stored as uint8 ``(T, N, 2, H, W)``.

:class:`FlowFieldsExtractor` is the per-video task of ``vidfeat extract flow`` (and the first
step of flow features with a network: :func:`ensure_flow_fields`); :func:`extract_flow_fields`
is the use case of ``vidfeat extract flow`` without a network. :func:`fields_extractor_for`
rebuilds the extractor of an existing fields set from its set.json, so resuming never mixes
configurations; :func:`flow_training_fields` (through :func:`prepare_training_fields`) fills
the fields a flow network trains on.

Imports decode, grid and flow, and the extraction base; the engines never import this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.decode import output_size, probe, read_frames
from vidfeat.errors import ConfigError, TooFewFramesError
from vidfeat.extract.job import RunOptions
from vidfeat.extract.worker import Extracted
from vidfeat.flow import FlowMethod, configure
from vidfeat.grid import SegmentGrid
from vidfeat.report import Report
from vidfeat.videolist import VideoList, VideoRecord, base_attrs


class _Stopped(Exception):
    """Raised in the decoding thread's frame callback: the flow side gave up on the video."""


class FlowFieldsExtractor:
    """Optical flow on the grid's pairs, stored as uint8 fields ``(T, N, 2, H, W)``.

    Only the T×N consecutive pairs of the test-mode grid are computed (never every pair of the
    video). Frames are decoded by FFmpeg straight to grayscale (RGB for a colour method such
    as RAFT), resized by its scaler to ``short_side``, in a thread that runs while the flow of
    the segments already decoded is computed; each field is quantised as soon as it is
    computed. ``threads``: the worker's thread budget (default 1; the run's engine gives each
    worker its share, :func:`thread_budget_for`): pairs computed at once by an OpenCV method
    (one OpenCV thread each), torch's threads for a network.
    """

    modality = "flow-fields"

    def __init__(
        self,
        method: FlowMethod | str,
        *,
        segments: int,
        frames: int,
        short_side: int,
        bound: float,
        threads: int | None = None,
        params: dict[str, Any] | None = None,
        runtime: dict[str, Any] | None = None,
        applicable_only: bool = False,
    ) -> None:
        if short_side < 16:
            raise ConfigError(f"--short-side must be >= 16 (got {short_side})")
        if not bound > 0:
            raise ConfigError(f"--bound must be > 0 (got {bound})")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1 (got {threads})")
        if isinstance(method, str):  # a method's name: configured here (vidfeat.flow.configure)
            method = configure(method, params, runtime, applicable_only=applicable_only)
        self.method = method
        self.grid = SegmentGrid(segments, frames, "test", pairs=True)
        self.short_side = short_side
        self.bound = float(bound)
        self.threads = threads

    def config(self) -> dict:
        return {
            "modality": self.modality,
            "method": self.method.name,
            "method_params": self.method.config(),
            **self.method.provenance(),  # e.g. a network's weights digest (refuses without)
            **self.grid.config(),
            "short_side": self.short_side,
            "quantization": {"dtype": "uint8", "bound": self.bound, "zero": 127.5},
            "dtype": "uint8",
            "feature_shape": [self.grid.T, self.grid.N, 2, -1, -1],
        }

    def setup(self) -> None:
        from vidfeat.flow import configure_worker_threads

        # an OpenCV method spends the budget on pairs (flow_on_grid's threads), one OpenCV
        # thread each; torch runs a network's batches on all of them
        torch = self.method.uses_torch
        configure_worker_threads((self.threads or 1) if torch else 1, torch=torch)
        self.method.setup()

    def extract(self, record: VideoRecord, class_index: int | None) -> Extracted:
        info = probe(record.path)
        if info.num_frames < 2:
            # the grid would pair the only frame with itself: zero flow that looks like a still
            # scene, so refuse instead of storing it
            raise TooFewFramesError(
                record.path,
                f"needs at least 2 frames for optical flow, the video holds {info.num_frames}",
            )
        grid = self.grid.sample(info.num_frames, info.fps)
        fields = self._fields(record.path, info.width, info.height, grid.indices)
        return Extracted(fields, base_attrs(record, class_index, info, grid))

    def _fields(self, path, width: int, height: int, indices: np.ndarray) -> np.ndarray:
        """uint8 fields of the grid ``indices`` ``(T, N+1)``, decoding in a thread meanwhile.

        Pairs repeated by the grid of a short video are computed once."""
        from vidfeat.flow import flow_on_grid

        T, n1 = indices.shape
        w, h = output_size(width, height, short_side=self.short_side)
        frames = np.empty((T, n1, h, w, 3) if self.method.color else (T, n1, h, w), np.uint8)
        slots: dict[int, list[tuple[int, int]]] = {}
        for t in range(T):
            for j in range(n1):
                slots.setdefault(int(indices[t, j]), []).append((t, j))
        missing = [n1] * T  # frames of segment t still to decode
        cond = threading.Condition()
        stop = threading.Event()
        state: dict[str, Any] = {"error": None, "done": False}

        def on_frame(rank: int, frame: np.ndarray) -> None:
            if stop.is_set():
                raise _Stopped
            for t, j in slots[rank]:
                frames[t, j] = frame  # a shape mismatch raises here and ends the decode
            with cond:
                for t, _ in slots[rank]:
                    missing[t] -= 1
                cond.notify_all()

        def decode() -> None:
            try:
                read_frames(
                    path,
                    sorted(slots),
                    short_side=self.short_side,
                    gray=not self.method.color,
                    on_frame=on_frame,
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the flow side
                state["error"] = exc
            finally:
                with cond:
                    state["done"] = True
                    cond.notify_all()

        def ready(t: int) -> None:
            with cond:
                while missing[t] > 0:
                    if state["error"] is not None:
                        raise state["error"]
                    if state["done"]:
                        raise RuntimeError(f"{path}: decoding ended before segment {t}'s frames")
                    cond.wait()

        th = threading.Thread(target=decode, name="vidfeat-decode", daemon=True)
        th.start()
        try:
            return flow_on_grid(
                frames,
                self.method,
                indices=indices,
                bound=self.bound,
                ready=ready,
                threads=self.threads or 1,
            )
        finally:
            stop.set()  # the decoder stops at its next frame if the flow side failed
            th.join(timeout=30.0)


def _refuse_differing(fields_set: str, stored: dict, given: dict) -> None:
    """Options given on the command line that the existing fields set fixes otherwise are
    refused, naming the stored value and the asked one (the set's own values are used)."""
    have = {
        "frames": int(stored["N"]),
        "short_side": int(stored["short_side"]),
        "bound": float(stored["quantization"]["bound"]),
        **stored.get("method_params", {}),
    }
    diffs = [
        f"{k}: set has {have[k]!r}, asked {v!r}"
        for k, v in given.items()
        if k in have and v is not None and have[k] != v
    ]
    if diffs:
        raise ConfigError(
            f"flow fields set {fields_set!r} exists with other options ({'; '.join(diffs)}); "
            "leave those options out to use its fields, or pass --fields-name for a new set"
        )


def fields_extractor_for(
    store_root: str | Path,
    fields_set: str,
    method: str,
    params: dict,
    segments: int,
    frames: int,
    short_side: int,
    bound: float,
    *,
    runtime: dict | None = None,
    given: dict | None = None,
) -> FlowFieldsExtractor:
    """The extractor that fills ``fields_set``: rebuilt from its set.json when it exists, so
    resuming never mixes configurations; otherwise from the given options. ``runtime``: the
    method's run-time settings (``device``, ``batch_size``, ``weights``; see
    ``FlowMethod.runtime``) — only those its method takes are applied, since a network's
    ``--device`` and ``--batch-size`` reach this too."""
    from vidfeat.store import FeatureStore

    store = FeatureStore(store_root)
    if fields_set in store.sets():
        c = store.open_set(fields_set).config
        if c.get("method") != method:
            raise ConfigError(f"set {fields_set!r} holds {c.get('method')} flow, not {method}")
        _refuse_differing(fields_set, c, given or {})
        return FlowFieldsExtractor(
            method,
            # the set's own values; a given parameter of another method is still refused
            params={**params, **c["method_params"]},
            runtime=runtime,
            applicable_only=True,
            segments=int(c["T"]),
            frames=int(c["N"]),
            short_side=int(c["short_side"]),
            bound=float(c["quantization"]["bound"]),
        )
    return FlowFieldsExtractor(
        method,
        params=params,
        runtime=runtime,
        applicable_only=True,
        segments=segments,
        frames=frames,
        short_side=short_side,
        bound=bound,
    )


def thread_budget_for(opts: RunOptions) -> int:
    """Threads per worker for a run, as its engine gives them (a local worker's share of the
    cores, a Ray task's reserved CPUs): :meth:`~vidfeat.extract.Engine.threads_per_worker`."""
    from vidfeat.extract import engine_for

    return engine_for(opts).threads_per_worker(opts)


def replace_threads(extractor: FlowFieldsExtractor, threads: int) -> FlowFieldsExtractor:
    """A copy of ``extractor`` with its thread budget set (the caller's stays as it was)."""
    import copy

    ex = copy.copy(extractor)
    ex.threads = threads
    return ex


def ensure_flow_fields(
    videos: VideoList,
    store_root: str | Path,
    fields_set: str,
    extractor: FlowFieldsExtractor,
    opts: RunOptions,
    echo: Callable[[str], Any] = print,
) -> Report:
    """Compute the fields of the videos not yet in ``fields_set`` (resumable). The caller's
    ``--retry-failed``, ``--limit``, ``--overwrite`` and ``--float16`` apply to its own set, not
    to this one."""
    from vidfeat.extract import run_extraction

    # --float16 is the network features' storage: the uint8 fields are stored as they are
    opts = replace(opts, retry_failed=False, limit=None, overwrite=False, float16=False)
    if extractor.threads is None:
        extractor = replace_threads(extractor, thread_budget_for(opts))
    rep = run_extraction(videos, extractor, store_root, fields_set, opts, echo=echo)
    if rep.done:
        echo(f"flow fields: {rep.summary()}")
    return rep


def extract_flow_fields(
    videos: VideoList,
    store_root: str | Path,
    *,
    method: str,
    params: dict,
    set_name: str,
    segments: int,
    frames: int,
    short_side: int,
    bound: float,
    opts: RunOptions,
    runtime: dict | None = None,
    echo: Callable[[str], Any] = print,
) -> Report:
    """``vidfeat extract flow`` without a network: the flow fields of the grid's pairs are
    the set ``set_name``, uint8 ``(T, N, 2, H, W)`` (resumable, like every extraction).

    ``params``: the method's parameters (the others keep OpenCV's defaults); ``runtime``: the
    run-time settings the user gave (``device``, ``batch_size``, ``weights``; see
    ``FlowMethod.runtime``), which a method they do not apply to refuses with the reason (a CPU
    method has no device). Each worker gets its share of the cores (:func:`thread_budget_for`).
    """
    from vidfeat.extract import run_extraction

    extractor = FlowFieldsExtractor(
        method,
        params=params,
        runtime=runtime,
        segments=segments,
        frames=frames,
        short_side=short_side,
        bound=bound,
        threads=thread_budget_for(opts),
    )
    return run_extraction(videos, extractor, store_root, set_name, opts, echo=echo)


def prepare_training_fields(
    lists: list[VideoList],
    store_root: str | Path,
    fields_set: str,
    extractor: FlowFieldsExtractor,
    *,
    workers: int,
    progress: bool,
    echo: Callable[[str], Any] = print,
) -> None:
    """``vidfeat train flow``: the fields of every training and validation video, computed
    into ``fields_set`` where missing, before training starts."""
    for videos in lists:
        ensure_flow_fields(
            videos,
            store_root,
            fields_set,
            extractor,
            RunOptions(workers=max(1, workers), progress=progress),
            echo=echo,
        )


def flow_training_fields(
    lists: list[VideoList],
    store_root: str | Path,
    fields_set: str,
    method: str,
    params: dict,
    *,
    segments: int,
    frames: int,
    short_side: int,
    bound: float,
    runtime: dict | None = None,
    given: dict | None = None,
    segments_given: bool = False,
    workers: int = 1,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> FlowFieldsExtractor:
    """``vidfeat train flow``'s first step: the extractor of ``fields_set`` (its own
    configuration when the set exists: options ``given`` otherwise are refused, naming both
    values; ``segments_given``: likewise for the grid's T), then the fields of every video of
    ``lists`` computed where missing. Returns the extractor (its ``short_side`` is the run's)."""
    ex = fields_extractor_for(
        store_root,
        fields_set,
        method,
        params,
        segments,
        frames,
        short_side,
        bound,
        runtime=runtime,
        given=given,
    )
    if segments_given and ex.grid.T != segments:
        raise ConfigError(
            f"--fields-segments {segments}: set {fields_set!r} holds fields on a T={ex.grid.T} "
            "grid; leave --fields-segments out to train on them, or pass --fields-name for a "
            "new set"
        )
    prepare_training_fields(
        lists, store_root, fields_set, ex, workers=workers, progress=progress, echo=echo
    )
    return ex
