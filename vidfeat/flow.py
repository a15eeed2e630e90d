"""Optical flow on the segment grid's frame pairs: TV-L1, Farneback and DIS (OpenCV), RAFT
(torchvision, :mod:`vidfeat.raft`).

Only the grid's T×N consecutive pairs are computed — never every pair of a video, which is
what dense per-frame flow dumps of other tools cost. Fields are stored quantised to uint8 with a
bound (the TSN convention: ±20 px ↔ 0..255), which keeps them small and reusable by the flow
networks without recomputing TV-L1.

Every algorithm parameter is a field of the method's parameter dataclass, with OpenCV's
defaults and a ``help`` text in its metadata, and becomes one command-line option
(:func:`method_param_fields`, :func:`option_name`, :func:`param_type`, :func:`param_choices`).

A method computes one pair per ``calc`` call on the CPU (OpenCV), or — a *batched* method —
defines ``calc_batch`` and gets every pair of a video at once, chunked by its ``batch_size``, on
its ``device`` (see :class:`FlowMethod`); :func:`flow_on_grid` uses ``calc_batch`` when present.

``cv2`` is imported inside the functions that need it: the CLI imports this module to build its
options, and ``vidfeat --help`` must stay fast.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.flow_quant import (
    DEFAULT_BOUND,
    dequantize,
    quantize,
    quantize_pair,
    to_network_input,
)
from vidfeat.registry import Registry

# Farneback's `flags`: only the Gaussian window is meaningful here. OPTFLOW_USE_INITIAL_FLOW (4)
# needs a previous flow field as input, which grid pairs do not have.
FARNEBACK_GAUSSIAN = 256


def _opt(
    default: Any,
    help: str,  # noqa: A002 - mirrors click's argument name
    *,
    kind: type | None = None,
    choices: tuple[str, ...] | None = None,
    default_text: str | None = None,
) -> Any:
    """A parameter field. ``kind``: its type when the default (None: "decided by the method",
    e.g. by a preset) does not tell; ``choices``: the allowed strings of a ``str`` field;
    ``default_text``: how the CLI help names the default."""
    meta: dict[str, Any] = {"help": help}
    if kind is not None:
        meta["type"] = kind
    if choices is not None:
        meta["choices"] = tuple(choices)
    if default_text is not None:
        meta["default_text"] = default_text
    return field(default=default, metadata=meta)


def param_type(fld: dataclasses.Field) -> type:
    """The type of a parameter field's values (``int``, ``float``, ``bool`` or ``str``)."""
    return fld.metadata.get("type") or type(fld.default)


def param_choices(fld: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a ``str`` parameter field (None for numbers and flags)."""
    return fld.metadata.get("choices")


def param_default_text(fld: dataclasses.Field) -> str:
    """The default as the CLI help shows it."""
    return str(fld.metadata.get("default_text", fld.default))


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
    """Values come from click (typed) or from a set.json (JSON numbers, strings, booleans):
    accept an integral float for an int field, reject anything that is not a finite number
    (or one of the choices of a string field, or a boolean of a flag). None keeps a default of
    None ("decided by the method")."""
    kind = param_type(fld)
    opt = option_name(fld.name)
    if value is None and fld.default is None:
        return None
    choices = param_choices(fld)
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{opt} must be one of {', '.join(choices)} (got {value!r})")
        return str(value)
    if kind is bool:
        if isinstance(value, bool | np.bool_) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ConfigError(f"{opt} must be true or false (got {value!r})")
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

    ``calc(prev, nxt)``: uint8 grayscale ``(H, W)`` × 2 (RGB ``(H, W, 3)`` for a method with
    ``color = True``) → float32 ``(H, W, 2)`` with ``[..., 0] = dx`` and ``[..., 1] = dy``, such
    that ``prev[y, x] ≈ nxt[y + dy, x + dx]``.

    A batched method (a network, a GPU port) defines ``calc_batch(prev, nxt)``: uint8
    ``(B, H, W)`` × 2 (``(B, H, W, 3)`` with ``color``) → float32 ``(B, H, W, 2)`` numpy, pair
    ``i`` being ``prev[i] → nxt[i]`` as in ``calc``; :func:`flow_on_grid` then hands it every
    distinct pair of a video, ``batch_size`` pairs per call (None: the method's
    :meth:`default_batch`). Such a method sets ``uses_torch = True``: ``--device`` and
    ``--batch-size`` apply to it (:meth:`runtime`), and the thread budget reaches torch too.
    ``setup()`` runs once per worker process before the first video (load a model there).

    Picklable (it is shipped to worker processes): only the parameters and run-time settings
    are pickled and any OpenCV object or model is rebuilt lazily where it is used. One OpenCV
    object per thread, so a method may also be shared by threads.
    """

    name: ClassVar[str] = ""
    params_cls: ClassVar[type] = object
    color: ClassVar[bool] = False  # frames are RGB (H, W, 3), not gray (H, W)
    uses_torch: ClassVar[bool] = False  # runs on a torch device; --device/--batch-size apply
    calc_batch: ClassVar[Callable[..., np.ndarray] | None] = None  # batched methods define it
    out_buffer: ClassVar[bool] = True  # calc writes into a given `out` without reading it

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
        p = self.params_cls(**{k: _coerce(fields[k], v) for k, v in params.items()})
        self.params = self.resolve(p)
        self.validate()
        self.device: str = "auto"
        self.batch_size: int | None = None
        self.weights: str | None = None
        self._local = threading.local()

    @classmethod
    def param_fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls.params_cls))

    def resolve(self, params: Any) -> Any:
        """The parameters with every None ("decided by the method", e.g. by a preset) replaced
        by the value it stands for, so that :meth:`config` records what runs."""
        return params

    def validate(self) -> None:
        """Raise ConfigError naming the option when a parameter would crash or hang OpenCV or
        silently produce garbage (zero or NaN flow)."""

    def config(self) -> dict[str, Any]:
        """The parameters as a JSON-serialisable dict; ``make_method(name, **config())``
        rebuilds an equal method (the store's set.json keeps this next to the method name)."""
        return dataclasses.asdict(self.params)

    def provenance(self) -> dict[str, Any]:
        """Extra set.json keys of the extractor (e.g. the digest of a network's weights; keys
        ending in ``_path`` or ``_info`` are informational). Raises ConfigError when the method
        cannot run (weights missing): this is called before any video is processed."""
        return {}

    def runtime(
        self,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        weights: str | os.PathLike | None = None,
    ) -> FlowMethod:
        """Apply run-time settings (they change no value, or only through :meth:`provenance`,
        so they are not parameters): ``device`` and ``batch_size`` for a method that runs on a
        torch device, ``weights`` (a state-dict file) for a network. A setting given to a
        method it does not apply to is refused with the reason. Returns ``self``."""
        if not self.uses_torch:
            if device is not None:
                raise ConfigError(
                    f"--device does not apply to --method {self.name}: OpenCV computes it on "
                    "the CPU (each of --workers W processes gets cores/W threads)"
                )
            if batch_size is not None:
                raise ConfigError(
                    f"--batch-size does not apply to --method {self.name}: OpenCV computes one "
                    "pair per call; --workers runs videos in parallel"
                )
        if weights is not None:
            raise ConfigError(
                f"--flow-weights does not apply to --method {self.name}: it has no learned weights"
            )
        if device is not None:
            self.device = str(device)
        if batch_size is not None:
            if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
                raise ConfigError(f"--batch-size must be an integer >= 1 (got {batch_size!r})")
            self.batch_size = int(batch_size)
        return self

    def setup(self) -> None:
        """Per-process initialisation before the first video (a network loads its weights)."""

    def default_batch(self, height: int, width: int) -> int:
        """Pairs per ``calc_batch`` call when ``batch_size`` is None."""
        return 1

    def _check_frames(self, prev: np.ndarray, nxt: np.ndarray, batch: bool = False) -> None:
        if prev.dtype != np.uint8 or nxt.dtype != np.uint8:
            raise ValueError(f"flow needs uint8 frames, got {prev.dtype} and {nxt.dtype}")
        nd = 2 + batch + self.color
        if prev.ndim != nd or prev.shape != nxt.shape or (self.color and prev.shape[-1] != 3):
            what = "RGB (H, W, 3)" if self.color else "grayscale (H, W)"
            raise ValueError(
                f"flow needs two {'batches of ' if batch else ''}{what} frames, got "
                f"{prev.shape}, {nxt.shape}"
            )

    def calc(self, prev: np.ndarray, nxt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Flow from ``prev`` to ``nxt`` (uint8 ``(H, W)``) → float32 ``(H, W, 2)`` (dx, dy).

        ``out``: an optional contiguous float32 ``(H, W, 2)`` buffer to write into.
        """
        self._check_frames(prev, nxt)
        return self._calc(prev, nxt, out)

    def _calc(self, prev: np.ndarray, nxt: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if self.calc_batch is None:
            raise NotImplementedError
        f = self.calc_batch(prev[None], nxt[None])[0]
        if out is None:
            return f
        out[...] = f
        return out

    def __getstate__(self) -> dict:
        # cv2 objects, models and thread-locals do not pickle; parameters and settings do
        return {
            "params": self.params,
            "device": self.device,
            "batch_size": self.batch_size,
            "weights": self.weights,
        }

    def __setstate__(self, state: dict) -> None:
        self.params = state["params"]
        self.device = state.get("device", "auto")
        self.batch_size = state.get("batch_size")
        self.weights = state.get("weights")
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
    :func:`option_name` ``(f.name)``, its type :func:`param_type` ``(f)`` (a choice of
    :func:`param_choices` ``(f)`` for strings), its help ``f.metadata["help"]``. Unknown name →
    ConfigError listing the choices."""
    return FLOW_METHODS.get(name).param_fields()


def make_method(name: str, **params: Any) -> FlowMethod:
    """A configured method; parameters not given keep OpenCV's defaults. Unknown method,
    parameter of another method or invalid value → ConfigError naming the option."""
    return FLOW_METHODS.get(name)(**params)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a cgroup's or taskset's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_budget(workers: int) -> int:
    """Threads for OpenCV and torch in each of ``workers`` processes: ``cores // workers``
    (at least 1), so W workers share the machine's cores instead of oversubscribing them."""
    return max(1, available_cores() // max(1, int(workers)))


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
    """
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
    T, n1, H, W = frames.shape[:4]
    if indices is not None and np.shape(indices) != (T, n1):
        raise ValueError(f"indices must have shape {(T, n1)} like the frames, got {indices.shape}")
    q = bound is not None
    out = np.empty((T, n1 - 1, 2, H, W), dtype=np.uint8 if q else np.float32)
    work = np.empty((H, W * 2), dtype=np.uint8) if q else None
    todo, repeats = _grid_pairs(T, n1 - 1, indices)
    done = -1  # segments up to this one are known to be decoded

    def wait(t: int) -> None:
        nonlocal done
        while ready is not None and done < t:
            done += 1
            ready(done)

    def put(t: int, j: int, f: np.ndarray) -> None:
        if q:
            quantize_pair(f, bound, out[t, j], work)
        else:  # per-channel copies: contiguous writes, far cheaper than one transposed copy
            out[t, j, 0] = f[..., 0]
            out[t, j, 1] = f[..., 1]

    if method.calc_batch is not None:
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
    else:
        # OpenCV writes into buf: no allocation per pair
        buf = np.empty((H, W, 2), dtype=np.float32) if method.out_buffer else None
        for t, j in todo:
            wait(t)
            put(t, j, method.calc(frames[t, j], frames[t, j + 1], buf))
    for (t, j), first in repeats:
        out[t, j] = out[first]
    return out


# the other methods register on import (RAFT imports torch only when it runs)
from vidfeat import dis as _dis  # noqa: E402, F401
from vidfeat import raft as _raft  # noqa: E402, F401

__all__ = [
    "DEFAULT_BOUND",
    "FLOW_METHODS",
    "FlowMethod",
    "available_cores",
    "configure_worker_threads",
    "dequantize",
    "flow_on_grid",
    "make_method",
    "method_param_fields",
    "option_name",
    "param_choices",
    "param_type",
    "quantize",
    "quantize_pair",
    "thread_budget",
    "to_gray",
    "to_network_input",
]
