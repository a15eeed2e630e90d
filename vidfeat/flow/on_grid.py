"""Flow on the segment grid's frame pairs, and the thread budget of the process computing it.

:func:`flow_on_grid` computes only the grid's T×N consecutive pairs — never every pair of a
video, which is what dense per-frame flow dumps of other tools cost — and quantises each field
as soon as it is computed. A pair-by-pair (OpenCV) method gets the pairs on the worker's
threads, a batched method (:meth:`~vidfeat.flow.base.FlowMethod.calc_batch`) every pair of a
video at once, chunked by its ``batch_size``.

:func:`thread_budget` is each of W worker processes' share of the cores, and
:func:`configure_worker_threads` gives it to OpenCV (and torch); :func:`to_gray` is OpenCV's
RGB → gray conversion of the frames.

``cv2`` is imported inside the functions that need it: the CLI imports :mod:`vidfeat.flow` to
build its options, and ``vidfeat --help`` must stay fast.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from vidfeat.cores import cores_per_worker
from vidfeat.flow.base import FlowMethod
from vidfeat.flow.quant import quantize_pair


def thread_budget(workers: int) -> int:
    """Threads for OpenCV and torch in each of ``workers`` processes: ``cores // workers``
    (at least 1), so W workers share the machine's cores instead of oversubscribing them
    (:func:`vidfeat.cores.cores_per_worker`, the local engine's rule)."""
    return cores_per_worker(workers)


def configure_worker_threads(n: int = 1, *, torch: bool = False) -> None:
    """Set this process's thread count for OpenCV (and torch's intra-op pool with ``torch``,
    for methods that run a network): each of W worker processes calls it with its share of
    the cores (:func:`thread_budget`); W pools of all cores would oversubscribe them."""
    import cv2

    if n < 1:
        raise ValueError(f"threads must be >= 1 (got {n})")
    cv2.setNumThreads(int(n))
    if torch:
        import torch as _torch

        _torch.set_num_threads(int(n))


def to_gray(frames: np.ndarray) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 RGB → ``(..., H, W)`` uint8 gray, exactly OpenCV's RGB2GRAY
    (0.299 R + 0.587 G + 0.114 B, fixed-point rounding)."""
    import cv2

    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"to_gray needs uint8 (..., H, W, 3) RGB frames, got {frames.shape}")
    h, w = frames.shape[-3:-1]
    flat = frames.reshape(-1, h, w, 3)
    out = np.empty((flat.shape[0], h, w), dtype=np.uint8)
    for i, f in enumerate(flat):
        cv2.cvtColor(f, cv2.COLOR_RGB2GRAY, dst=out[i])
    return out.reshape(frames.shape[:-1])


def _grid_pairs(
    T: int, N: int, indices: np.ndarray | None
) -> tuple[list[tuple[int, int]], list[tuple[tuple[int, int], tuple[int, int]]]]:
    """The grid's pairs to compute, in grid order, and the repeats: ``((t, j), (t0, j0))``
    where pair ``(t, j)`` has the frame indices of the computed pair ``(t0, j0)``."""
    todo: list[tuple[int, int]] = []
    repeats: list[tuple[tuple[int, int], tuple[int, int]]] = []
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for t in range(T):
        for j in range(N):
            if indices is not None:
                key = (int(indices[t, j]), int(indices[t, j + 1]))
                if key in seen:
                    repeats.append(((t, j), seen[key]))
                    continue
                seen[key] = (t, j)
            todo.append((t, j))
    return todo, repeats


def flow_on_grid(
    frames: np.ndarray,
    method: FlowMethod,
    indices: np.ndarray | None = None,
    *,
    bound: float | None = None,
    ready: Callable[[int], Any] | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Flow of each segment's consecutive pairs, and only those.

    ``frames``: uint8 gray ``(T, N+1, H, W)`` (the grid's frames; ``(T, N+1, H, W, 3)`` RGB for
    a method with ``color``) → float32 ``(T, N, 2, H, W)``; ``[t, j]`` is the flow from
    ``frames[t, j]`` to ``frames[t, j+1]``, channel 0 = x, 1 = y (the layout the flow networks
    stack into 2N channels). A batched method gets the pairs ``batch_size`` at a time through
    its ``calc_batch``; the others one by one through ``calc``.

    ``indices``: optional int ``(T, N+1)`` frame indices of ``frames`` (the grid's). When
    given, a pair of indices met before (overlapping segments of short videos) is copied, not
    recomputed. Without it every pair is computed.

    ``bound``: quantise each field as soon as it is computed (:func:`quantize_pair`) and return
    uint8 ``(T, N, 2, H, W)``: ``quantize(flow_on_grid(...), bound)`` without the float grid.
    ``ready``: optional ``ready(t)``, called with t = 0, 1, ... before segment t's frames are
    first read; it blocks until they are in ``frames`` (the extractor decodes meanwhile).
    ``threads``: pairs computed at once by a pair-by-pair (OpenCV) method, each on its own
    thread and OpenCV object (OpenCV's calls release the GIL; Farneback and DIS gain nothing
    from OpenCV's own threads at these sizes, so a worker's thread budget goes to pairs).
    """
    _check_inputs(frames, method, indices, threads)
    T, n1, H, W = frames.shape[:4]
    sink = _Fields((T, n1 - 1, H, W), bound)
    todo, repeats = _grid_pairs(T, n1 - 1, indices)
    done = -1  # segments up to this one are known to be decoded

    def wait(t: int) -> None:
        nonlocal done
        while ready is not None and done < t:
            done += 1
            ready(done)

    if method.calc_batch is not None:
        _batched(method, frames, todo, wait, sink.put)
    else:

        def one(t: int, j: int) -> None:
            buf = getattr(sink.scratch, "buf", None)  # OpenCV writes into it: no allocation
            if buf is None and method.out_buffer:
                buf = sink.scratch.buf = np.empty((H, W, 2), dtype=np.float32)
            sink.put(t, j, method.calc(frames[t, j], frames[t, j + 1], buf))

        n = min(int(threads), len(todo))
        if n <= 1:
            for t, j in todo:
                wait(t)
                one(t, j)
        else:
            _on_threads(todo, wait, one, n)
    for (t, j), first in repeats:
        sink.out[t, j] = sink.out[first]
    return sink.out


def _check_inputs(
    frames: np.ndarray, method: FlowMethod, indices: np.ndarray | None, threads: int
) -> None:
    nd = 5 if method.color else 4
    if (
        frames.ndim != nd
        or frames.shape[1] < 2
        or frames.dtype != np.uint8
        or (method.color and frames.shape[-1] != 3)
    ):
        what = "(T, N+1, H, W, 3) RGB" if method.color else "(T, N+1, H, W)"
        raise ValueError(
            f"flow_on_grid needs uint8 {what} frames with N >= 1 for --method {method.name}, "
            f"got {frames.dtype} {frames.shape}"
        )
    T, n1 = frames.shape[:2]
    if indices is not None and np.shape(indices) != (T, n1):
        raise ValueError(f"indices must have shape {(T, n1)} like the frames, got {indices.shape}")
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 (got {threads!r})")


class _Fields:
    """Where the pairs' flow goes: ``(T, N, 2, H, W)`` float32, or uint8 fields quantised as
    each pair arrives (``bound``). ``scratch`` holds each thread's own buffers."""

    def __init__(self, shape: tuple[int, int, int, int], bound: float | None) -> None:
        T, n, H, W = shape
        self.bound = bound
        self.out = np.empty((T, n, 2, H, W), dtype=np.float32 if bound is None else np.uint8)
        self.scratch = threading.local()  # per thread: OpenCV's output, quantisation's work

    def put(self, t: int, j: int, f: np.ndarray) -> None:
        if self.bound is not None:
            work = getattr(self.scratch, "work", None)
            if work is None:
                H, W = f.shape[:2]
                work = self.scratch.work = np.empty((H, W * 2), dtype=np.uint8)
            quantize_pair(f, self.bound, self.out[t, j], work)
        else:  # per-channel copies: contiguous writes, far cheaper than one transposed copy
            self.out[t, j, 0] = f[..., 0]
            self.out[t, j, 1] = f[..., 1]


def _batched(
    method: FlowMethod,
    frames: np.ndarray,
    todo: list[tuple[int, int]],
    wait: Callable[[int], None],
    put: Callable[[int, int, np.ndarray], None],
) -> None:
    """A batched method's pairs, ``batch_size`` at a time through its ``calc_batch``."""
    H, W = frames.shape[2:4]
    step = method.batch_size or method.default_batch(H, W)
    for i in range(0, len(todo), step):
        chunk = todo[i : i + step]
        wait(chunk[-1][0])
        ts = np.array([t for t, _ in chunk])
        js = np.array([j for _, j in chunk])
        f = method.calc_batch(frames[ts, js], frames[ts, js + 1])
        if f.shape != (len(chunk), H, W, 2):
            raise ValueError(
                f"{method.name}: calc_batch returned {f.shape}, not {(len(chunk), H, W, 2)}"
            )
        for k, (t, j) in enumerate(chunk):
            put(t, j, f[k])


def _on_threads(
    todo: list[tuple[int, int]],
    wait: Callable[[int], None],
    one: Callable[[int, int], None],
    n: int,
) -> None:
    """Run ``one(t, j)`` for every pair on ``n`` threads, handing segment t's pairs over once
    ``wait(t)`` returns. After the first error no further pair starts, and it is raised."""
    from concurrent.futures import ThreadPoolExecutor

    failed: list[BaseException] = []

    def guarded(t: int, j: int) -> None:
        if failed:
            return
        try:
            one(t, j)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failed.append(exc)

    with ThreadPoolExecutor(n, thread_name_prefix="vidfeat-flow") as pool:
        futures = []
        try:
            for t, j in todo:
                if failed:
                    break
                wait(t)
                futures.append(pool.submit(guarded, t, j))
        finally:
            if failed or len(futures) < len(todo):  # an error here or in a pair: stop early
                for f in futures:
                    f.cancel()
    if failed:
        raise failed[0]
