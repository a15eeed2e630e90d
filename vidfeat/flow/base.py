"""The flow method interface: :class:`FlowMethod` and its parameter fields.

A method's parameters are a frozen dataclass whose fields are made by :func:`_opt`: each carries
OpenCV's (or the method's) default and a ``help`` text, and becomes one command-line option
(:func:`option_name`, :func:`param_type`, :func:`param_choices`, :func:`param_default_text`).
Values from click or from a set.json are checked against the field (:func:`_coerce`), and
:func:`_positive` / :func:`_at_least` are the validation helpers the methods share.

The method modules (:mod:`~vidfeat.flow.opencv`, :mod:`~vidfeat.flow.tvl1_torch`,
:mod:`~vidfeat.flow.dis_flow`, :mod:`~vidfeat.flow.raft`) subclass :class:`FlowMethod`; the
registry that names them is :data:`vidfeat.flow.FLOW_METHODS`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable
from dataclasses import field
from typing import Any, ClassVar

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.params import default_flag


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


def option_name(field_name: str) -> str:
    """The command-line option of a parameter field (:func:`vidfeat.params.default_flag`)."""
    return default_flag(field_name)


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
    # the --precision values the method takes (none: OpenCV computes in float32), and why not
    # the others
    precisions: ClassVar[tuple[str, ...]] = ()
    precision_note: ClassVar[str] = "OpenCV computes flow in float32 on the CPU"
    default_precision: ClassVar[str] = "fp32"

    def __init__(self, **params: Any) -> None:
        self.refuse_foreign(params)
        fields = {f.name: f for f in dataclasses.fields(self.params_cls)}
        p = self.params_cls(**{k: _coerce(fields[k], v) for k, v in params.items()})
        self.params = self.resolve(p)
        self.validate()
        self.device: str = "auto"
        self.batch_size: int | None = None
        self.weights: str | None = None
        self.precision: str = self.default_precision
        self._local = threading.local()

    @classmethod
    def refuse_foreign(cls, params: dict[str, Any]) -> None:
        """Refuse, by flag, the parameters in ``params`` that are not this method's own."""
        fields = [f.name for f in dataclasses.fields(cls.params_cls)]
        unknown = sorted(set(params) - set(fields))
        if unknown:  # the command line's wording since its first version
            raise ConfigError(
                f"{', '.join(option_name(u) for u in unknown)} do not apply to "
                f"--method {cls.name} (its options: {', '.join(map(option_name, fields))})"
            )

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
        precision: str | None = None,
    ) -> FlowMethod:
        """Apply run-time settings (they change no value, or only through :meth:`provenance`,
        so they are not parameters): ``device`` and ``batch_size`` for a method that runs on a
        torch device, ``weights`` (a state-dict file) for a network, ``precision`` for a method
        that takes it (:attr:`precisions`). A setting given to a method it does not apply to is
        refused with the reason. Returns ``self``."""
        if precision is not None:
            if precision not in self.precisions:
                takes = f" (it takes {', '.join(self.precisions)})" if self.precisions else ""
                raise ConfigError(
                    f"--precision {precision} does not apply to --method {self.name}{takes}: "
                    f"{self.precision_note}"
                )
            self.precision = precision
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
            "precision": self.precision,
        }

    def __setstate__(self, state: dict) -> None:
        self.params = state["params"]
        self.device = state.get("device", "auto")
        self.batch_size = state.get("batch_size")
        self.weights = state.get("weights")
        self.precision = state.get("precision", self.default_precision)
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
