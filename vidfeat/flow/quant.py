"""Flow in pixels ↔ uint8 fields (the TSN convention: ±bound px ↔ 0..255).

One OpenCV call per array (``cv2.addWeighted`` into ``CV_8U``: scale, offset, round to nearest
even and saturate in one pass) when the values are finite and of sane size — what every flow
method produces — else a chunked numpy path with the same mapping that also handles NaN and
infinities. :func:`quantize_pair` quantises one ``(H, W, 2)`` field straight into the planar
``(2, H, W)`` slot of a grid, so no float grid of a whole video is ever built.

``cv2`` is imported inside the functions: the CLI imports :mod:`vidfeat.flow` (and so this) to
build its options, and ``vidfeat --help`` must stay fast.
"""

from __future__ import annotations

import math

import numpy as np

from vidfeat.errors import ConfigError

DEFAULT_BOUND = 20.0  # px; the TSN / dense_flow convention

_CHUNK = 1 << 20  # values per numpy quantisation chunk: a 4 MiB float buffer stays in cache
_FAST_LIMIT = 1e6  # |values| below this cannot overflow OpenCV's float → int rounding


def _check_bound(bound: float) -> float:
    if not (isinstance(bound, int | float | np.number) and bound > 0 and math.isfinite(bound)):
        raise ConfigError(f"--bound must be a finite number > 0 (got {bound!r})")
    return float(bound)


def _opencv_can(a2d: np.ndarray) -> bool:
    """True when the contiguous 2-D float32 ``a2d`` holds only finite values below
    ``_FAST_LIMIT`` (two cheap passes; OpenCV would map NaN and ±inf to 0)."""
    import cv2

    lo, hi, _, _ = cv2.minMaxLoc(a2d)
    return -_FAST_LIMIT < lo and hi < _FAST_LIMIT and math.isfinite(cv2.sumElems(a2d)[0])


def _as_2d(a: np.ndarray) -> np.ndarray | None:
    """A 2-D view OpenCV takes as one single-channel image, or None (not float32 or not
    contiguous: the numpy path)."""
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.size == 0:
        return None
    # rows of the last two axes: OpenCV's reductions crawl over narrow matrices, e.g. an
    # (H·W, 2) view of a field (10x slower than (H, 2W))
    return a.reshape(-1, a.shape[-2] * a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels (any shape, float) → uint8 of the same shape (the TSN convention).

    Values are clipped to ``[-bound, bound]`` and mapped linearly, ``-bound`` ↔ 0 and
    ``+bound`` ↔ 255, rounded to nearest (ties to even; OpenCV's and numpy's float arithmetic
    may put a value sitting on a tie on either side). The step is ``2·bound/255``, so
    ``dequantize(quantize(f))`` is within ``bound/255`` px of ``f`` for ``|f| <= bound``
    (0.078 px at the default 20). Zero flow maps to 127.5 → 128, i.e. decodes to +bound/255.
    NaN is stored as zero flow.
    """
    bound = _check_bound(bound)
    a = np.asarray(flow)
    a2 = _as_2d(a)
    if a2 is not None and _opencv_can(a2):
        import cv2

        q = cv2.addWeighted(a2, 255.0 / (2.0 * bound), a2, 0.0, 127.5, dtype=cv2.CV_8U)
        return q.reshape(a.shape)
    scale = np.float32(255.0 / (2.0 * bound))
    src = a.reshape(-1)
    out = np.empty(src.shape, dtype=np.uint8)
    buf = np.empty(min(_CHUNK, src.size), dtype=np.float32)
    # chunked and in place: the naive expression on a (25, 5, 2, 256, 340) float grid would
    # allocate four 87 MB temporaries and run ~5x slower
    for i in range(0, src.size, _CHUNK):
        n = min(_CHUNK, src.size - i)
        t = buf[:n]
        np.multiply(src[i : i + n], scale, out=t, casting="unsafe")
        t += np.float32(127.5)
        np.clip(t, 0.0, 255.0, out=t)
        np.nan_to_num(t, copy=False, nan=127.5)
        np.rint(t, out=t)
        out[i : i + n] = t
    return out.reshape(a.shape)


def quantize_pair(
    flow: np.ndarray, bound: float, dst: np.ndarray, work: np.ndarray | None = None
) -> None:
    """One field ``(H, W, 2)`` (dx, dy; as ``calc`` returns it) → uint8 into ``dst``
    ``(2, H, W)`` (planar, as the grid stores it), with :func:`quantize`'s mapping.
    ``work``: an optional uint8 ``(H, W * 2)`` scratch buffer (no allocation per pair)."""
    import cv2

    bound = _check_bound(bound)
    h, w = flow.shape[:2]
    a2 = _as_2d(flow)
    if a2 is not None and _opencv_can(a2):
        q = cv2.addWeighted(
            a2, 255.0 / (2.0 * bound), a2, 0.0, 127.5, dst=work, dtype=cv2.CV_8U
        ).reshape(h, w, 2)
    else:
        q = quantize(flow, bound)
    # de-interleaved by OpenCV straight into the two planes (7x faster than numpy's strided
    # copies); copied if the binding handed back new arrays instead
    x, y = cv2.split(np.ascontiguousarray(q), [dst[0], dst[1]])
    if x.ctypes.data != dst[0].ctypes.data or y.ctypes.data != dst[1].ctypes.data:
        dst[0], dst[1] = x, y


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 from :func:`quantize` → float32 flow in pixels, in ``[-bound, bound]``."""
    bound = _check_bound(bound)
    f = q.astype(np.float32)
    f *= np.float32(2.0 * bound / 255.0)
    f -= np.float32(bound)
    return f


def to_network_input(q: np.ndarray) -> np.ndarray:
    """uint8 fields → float32 ``(q - 127.5) / 127.5`` in ``[-1, 1]`` (what the flow networks
    see; equals ``dequantize(q, bound) / bound`` for any bound)."""
    f = q.astype(np.float32)
    f -= np.float32(127.5)
    f /= np.float32(127.5)
    return f
