"""Optical flow on the segment grid's frame pairs: TV-L1 and Farneback (OpenCV).

Only the grid's T×N consecutive pairs are computed — never every pair of a video, which is
what dense per-frame flow dumps of other tools cost. Fields are stored quantised to uint8 with a
bound (the TSN convention: ±20 px ↔ 0..255), which keeps them small and reusable by the flow
networks without recomputing TV-L1.

Every algorithm parameter is a field of the method's parameter dataclass, with OpenCV's
defaults and a ``help`` text in its metadata, and becomes one command-line option
(:func:`method_param_fields`, :func:`option_name`).

``cv2`` is imported inside the functions that need it: the CLI imports this module to build its
options, and ``vidfeat --help`` must stay fast.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.registry import Registry

DEFAULT_BOUND = 20.0  # px; the TSN / dense_flow convention

# Farneback's `flags`: only the Gaussian window is meaningful here. OPTFLOW_USE_INITIAL_FLOW (4)
# needs a previous flow field as input, which grid pairs do not have.
FARNEBACK_GAUSSIAN = 256


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors click's argument name
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TVL1Params:
    """``cv2.optflow.DualTVL1OpticalFlow`` parameters, with OpenCV's defaults (read back from a
    default-constructed object in the tests). ``useInitialFlow`` is left out: every grid pair is
    computed from scratch."""

    tau: float = _opt(0.25, "time step of the numerical scheme")
    lambda_: float = _opt(0.15, "weight of the data term (smaller: smoother flow)")
    theta: float = _opt(0.3, "tightness of the coupling of the two sub-problems")
    nscales: int = _opt(5, "number of pyramid scales (more: larger motions)")
    warps: int = _opt(5, "warpings per scale")
    epsilon: float = _opt(0.01, "stopping threshold of the inner iterations (0: run them all)")
    inner_iterations: int = _opt(30, "maximum inner iterations per warping")
    outer_iterations: int = _opt(10, "outer iterations (scheme updates) per warping")
    scale_step: float = _opt(0.8, "pyramid downscaling factor between scales, in (0, 1)")
    gamma: float = _opt(0.0, "weight of the illumination-variation term (0: off)")
    median_filtering: int = _opt(5, "median filter size applied to the flow: 1 (off), 3 or 5")


@dataclass(frozen=True)
class FarnebackParams:
    """``cv2.calcOpticalFlowFarneback`` parameters. The function has no defaults of its own;
    these are OpenCV's documented example values (tutorial / samples/python/opt_flow.py)."""

    pyr_scale: float = _opt(0.5, "pyramid scale between levels, in (0, 1)")
    levels: int = _opt(3, "pyramid levels including the full-size image")
    winsize: int = _opt(15, "averaging window size (larger: more robust, blurrier)")
    iterations: int = _opt(3, "iterations per pyramid level")
    poly_n: int = _opt(5, "pixel neighbourhood of the polynomial expansion (typically 5 or 7)")
    poly_sigma: float = _opt(
        1.2, "Gaussian sigma of the polynomial expansion (1.1 for 5, 1.5 for 7)"
    )
    flags: int = _opt(0, f"0, or {FARNEBACK_GAUSSIAN} for a Gaussian instead of a box window")


def option_name(field_name: str) -> str:
    """The command-line option of a parameter field: ``lambda_`` → ``--lambda``,
    ``inner_iterations`` → ``--inner-iterations``."""
    return "--" + field_name.rstrip("_").replace("_", "-")


def _coerce(fld: dataclasses.Field, value: Any) -> Any:
    """Values come from click (typed) or from a set.json (JSON numbers): accept an integral
    float for an int field, reject anything that is not a finite number."""
    kind = type(fld.default)
    opt = option_name(fld.name)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{opt} must be a number (got {value!r})")
    if not math.isfinite(value):
        raise ConfigError(f"{opt} must be finite (got {value!r})")
    if kind is int:
        if value != int(value):
            raise ConfigError(f"{opt} must be an integer (got {value!r})")
        return int(value)
    return float(value)


class FlowMethod:
    """A configured flow algorithm.

    ``calc(prev, nxt)``: uint8 grayscale ``(H, W)`` × 2 → float32 ``(H, W, 2)`` with
    ``[..., 0] = dx`` and ``[..., 1] = dy``, such that ``prev[y, x] ≈ nxt[y + dy, x + dx]``.

    Picklable (it is shipped to worker processes): only the parameters are pickled and any
    OpenCV object is rebuilt lazily where it is used. One OpenCV object per thread, so a method
    may also be shared by threads.
    """

    name: ClassVar[str] = ""
    params_cls: ClassVar[type] = object

    def __init__(self, **params: Any) -> None:
        fields = {f.name: f for f in dataclasses.fields(self.params_cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            verb = "does" if len(unknown) == 1 else "do"
            raise ConfigError(
                f"{', '.join(option_name(u) for u in unknown)} {verb} not apply to "
                f"--method {self.name} (its options: "
                f"{', '.join(option_name(f) for f in fields)})"
            )
        self.params = self.params_cls(**{k: _coerce(fields[k], v) for k, v in params.items()})
        self.validate()
        self._local = threading.local()

    @classmethod
    def param_fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls.params_cls))

    def validate(self) -> None:
        """Raise ConfigError naming the option when a parameter would crash or hang OpenCV or
        silently produce garbage (zero or NaN flow)."""

    def config(self) -> dict[str, int | float]:
        """The parameters as a JSON-serialisable dict; ``make_method(name, **config())``
        rebuilds an equal method (the store's set.json keeps this next to the method name)."""
        return dataclasses.asdict(self.params)

    def calc(self, prev: np.ndarray, nxt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Flow from ``prev`` to ``nxt`` (uint8 ``(H, W)``) → float32 ``(H, W, 2)`` (dx, dy).

        ``out``: an optional contiguous float32 ``(H, W, 2)`` buffer to write into.
        """
        if prev.dtype != np.uint8 or nxt.dtype != np.uint8:
            raise ValueError(f"flow needs uint8 frames, got {prev.dtype} and {nxt.dtype}")
        if prev.ndim != 2 or prev.shape != nxt.shape:
            raise ValueError(
                f"flow needs two grayscale (H, W) frames, got {prev.shape}, {nxt.shape}"
            )
        return self._calc(prev, nxt, out)

    def _calc(self, prev: np.ndarray, nxt: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def __getstate__(self) -> dict:
        # cv2 objects and thread-locals do not pickle; the parameters are all we need
        return {"params": self.params}

    def __setstate__(self, state: dict) -> None:
        self.params = state["params"]
        self._local = threading.local()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params == self.params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.name, self.params))

    def __repr__(self) -> str:
        return f"make_method({self.name!r}, **{self.config()!r})"


def _positive(p: Any, *names: str) -> None:
    for n in names:
        v = getattr(p, n)
        if not v > 0:
            raise ConfigError(f"{option_name(n)} must be > 0 (got {v})")


def _at_least(p: Any, lo: int, *names: str) -> None:
    for n in names:
        v = getattr(p, n)
        if v < lo:
            raise ConfigError(f"{option_name(n)} must be >= {lo} (got {v})")


FLOW_METHODS: Registry[type[FlowMethod]] = Registry("flow method")


@FLOW_METHODS.register("tvl1")
class TVL1(FlowMethod):
    """Dual TV-L1 (Zach et al. 2007; OpenCV contrib ``optflow``). Slow (~0.1-0.5 s per
    340×256 pair): its OpenCV object is created once per process/thread and reused."""

    name = "tvl1"
    params_cls = TVL1Params

    def validate(self) -> None:
        p = self.params
        # theta = 0 gives NaN flow, negative tau/lambda/theta diverge: none raise in OpenCV
        _positive(p, "tau", "lambda_", "theta")
        # 0 scales trips an OpenCV assertion; 0 warps/iterations silently return zero flow
        _at_least(p, 1, "nscales", "warps", "inner_iterations", "outer_iterations")
        if p.epsilon < 0:
            raise ConfigError(f"--epsilon must be >= 0 (got {p.epsilon})")
        if p.gamma < 0:
            raise ConfigError(f"--gamma must be >= 0 (got {p.gamma})")
        if not 0 < p.scale_step < 1:
            raise ConfigError(
                f"--scale-step must be in (0, 1) (got {p.scale_step}); "
                "for a single scale use --nscales 1"
            )
        # OpenCV median-blurs the float flow, which supports only kernel sizes 3 and 5
        if p.median_filtering not in (0, 1, 3, 5):
            raise ConfigError(
                f"--median-filtering must be 1 (off), 3 or 5 (got {p.median_filtering})"
            )

    def cv_object(self) -> Any:
        """This thread's ``cv2.optflow.DualTVL1OpticalFlow``, created on first use."""
        obj = getattr(self._local, "cv", None)
        if obj is None:
            import cv2

            p = self.params
            obj = cv2.optflow.DualTVL1OpticalFlow_create(
                tau=p.tau,
                lambda_=p.lambda_,
                theta=p.theta,
                nscales=p.nscales,
                warps=p.warps,
                epsilon=p.epsilon,
                innnerIterations=p.inner_iterations,  # sic: OpenCV's spelling
                outerIterations=p.outer_iterations,
                scaleStep=p.scale_step,
                gamma=p.gamma,
                medianFiltering=p.median_filtering,
                useInitialFlow=False,
            )
            self._local.cv = obj
        return obj

    def _calc(self, prev: np.ndarray, nxt: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return self.cv_object().calc(prev, nxt, out)


@FLOW_METHODS.register("farneback")
class Farneback(FlowMethod):
    """Farneback (2003) polynomial-expansion flow (OpenCV core ``video``); fast."""

    name = "farneback"
    params_cls = FarnebackParams

    def validate(self) -> None:
        p = self.params
        if not 0 < p.pyr_scale < 1:
            raise ConfigError(f"--pyr-scale must be in (0, 1) (got {p.pyr_scale})")
        # winsize 0 gives NaN, iterations/poly_n 0 give zero flow, silently
        _at_least(p, 1, "levels", "winsize", "iterations", "poly_n")
        _positive(p, "poly_sigma")
        if p.flags not in (0, FARNEBACK_GAUSSIAN):
            raise ConfigError(
                f"--flags must be 0 or {FARNEBACK_GAUSSIAN} (OPTFLOW_FARNEBACK_GAUSSIAN) "
                f"(got {p.flags}); OPTFLOW_USE_INITIAL_FLOW does not apply to grid pairs"
            )

    def _calc(self, prev: np.ndarray, nxt: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        import cv2

        p = self.params
        return cv2.calcOpticalFlowFarneback(
            prev,
            nxt,
            out,
            p.pyr_scale,
            p.levels,
            p.winsize,
            p.iterations,
            p.poly_n,
            p.poly_sigma,
            p.flags,
        )


def method_param_fields(name: str) -> list[dataclasses.Field]:
    """The parameter fields of method ``name``, one command-line option each: the option is
    :func:`option_name` ``(f.name)``, its type ``type(f.default)``, its help
    ``f.metadata["help"]``. Unknown name → ConfigError listing the choices."""
    return FLOW_METHODS.get(name).param_fields()


def make_method(name: str, **params: Any) -> FlowMethod:
    """A configured method; parameters not given keep OpenCV's defaults. Unknown method,
    parameter of another method or invalid value → ConfigError naming the option."""
    return FLOW_METHODS.get(name)(**params)


def configure_worker_threads(n: int = 1) -> None:
    """Set OpenCV's thread count for this process. Worker processes call it with 1: W workers
    each running OpenCV's own thread pool on all cores would oversubscribe them."""
    import cv2

    if n < 1:
        raise ValueError(f"OpenCV threads must be >= 1 (got {n})")
    cv2.setNumThreads(int(n))


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


def flow_on_grid(
    frames: np.ndarray, method: FlowMethod, indices: np.ndarray | None = None
) -> np.ndarray:
    """Flow of each segment's consecutive pairs, and only those.

    ``frames``: uint8 gray ``(T, N+1, H, W)`` (the grid's frames) → float32
    ``(T, N, 2, H, W)``; ``[t, j]`` is the flow from ``frames[t, j]`` to ``frames[t, j+1]``,
    channel 0 = x, 1 = y (the layout the flow networks stack into 2N channels).

    ``indices``: optional int ``(T, N+1)`` frame indices of ``frames`` (the grid's). When
    given, a pair of indices met before (overlapping segments of short videos) is copied, not
    recomputed. Without it every pair is computed.
    """
    if frames.ndim != 4 or frames.shape[1] < 2 or frames.dtype != np.uint8:
        raise ValueError(
            f"flow_on_grid needs uint8 (T, N+1, H, W) frames with N >= 1, got "
            f"{frames.dtype} {frames.shape}"
        )
    T, n1, H, W = frames.shape
    if indices is not None and np.shape(indices) != (T, n1):
        raise ValueError(f"indices must have shape {(T, n1)} like the frames, got {indices.shape}")
    out = np.empty((T, n1 - 1, 2, H, W), dtype=np.float32)
    buf = np.empty((H, W, 2), dtype=np.float32)  # OpenCV writes here; no allocation per pair
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for t in range(T):
        for j in range(n1 - 1):
            if indices is not None:
                key = (int(indices[t, j]), int(indices[t, j + 1]))
                if key in seen:
                    out[t, j] = out[seen[key]]
                    continue
                seen[key] = (t, j)
            f = method.calc(frames[t, j], frames[t, j + 1], buf)
            # per-channel copies: contiguous writes, far cheaper than one transposed copy
            out[t, j, 0] = f[..., 0]
            out[t, j, 1] = f[..., 1]
    return out


def _check_bound(bound: float) -> float:
    if not (isinstance(bound, int | float | np.number) and bound > 0 and math.isfinite(bound)):
        raise ConfigError(f"--bound must be a finite number > 0 (got {bound!r})")
    return float(bound)


_CHUNK = 1 << 20  # values per quantisation chunk: a 4 MiB float buffer stays in cache


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels (any shape, float) → uint8 of the same shape (the TSN convention).

    Values are clipped to ``[-bound, bound]`` and mapped linearly, ``-bound`` ↔ 0 and
    ``+bound`` ↔ 255, rounded to nearest (ties to even). The step is ``2·bound/255``, so
    ``dequantize(quantize(f))`` is within ``bound/255`` px of ``f`` for ``|f| <= bound``
    (0.078 px at the default 20). Zero flow maps to 127.5 → 128, i.e. decodes to +bound/255.
    NaN is stored as zero flow.
    """
    bound = _check_bound(bound)
    scale = np.float32(255.0 / (2.0 * bound))
    src = np.asarray(flow).reshape(-1)
    out = np.empty(src.shape, dtype=np.uint8)
    buf = np.empty(min(_CHUNK, src.size), dtype=np.float32)
    # chunked and in place: a (25, 5, 2, 256, 340) grid is 87 MB of float32; the naive
    # expression would allocate four temporaries of that size and run ~5x slower
    for i in range(0, src.size, _CHUNK):
        n = min(_CHUNK, src.size - i)
        t = buf[:n]
        np.multiply(src[i : i + n], scale, out=t, casting="unsafe")
        t += np.float32(127.5)
        np.clip(t, 0.0, 255.0, out=t)
        np.nan_to_num(t, copy=False, nan=127.5)
        np.rint(t, out=t)
        out[i : i + n] = t
    return out.reshape(np.shape(flow))


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
