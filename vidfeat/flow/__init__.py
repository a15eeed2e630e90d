"""Optical flow on the segment grid's frame pairs: the flow methods, their registry and the
uint8 fields they are stored as.

Only the grid's T×N consecutive pairs are computed — never every pair of a video. Fields are
stored quantised to uint8 with a bound (the TSN convention: ±20 px ↔ 0..255), which keeps them
small and reusable by the flow networks without recomputing TV-L1.

Modules, base first:

- ``base``: :class:`FlowMethod`, the interface every method implements, and the parameter
  fields (one dataclass field per algorithm parameter, with its default and help text, becomes
  one command-line option: :func:`option_name`, :func:`param_type`, :func:`param_choices`).
- ``quant``: flow in pixels ↔ uint8 fields (:func:`quantize`, :func:`quantize_pair`,
  :func:`dequantize`, :func:`to_network_input`).
- ``opencv``: OpenCV's Dual TV-L1 (``tvl1``) and Farneback (``farneback``), each with its
  parameter dataclass (:class:`TVL1Params`, :class:`FarnebackParams`).
- ``tvl1_torch``: the PyTorch port of OpenCV's TV-L1 (``tvl1-torch``: the solver and the
  method, batched, on ``--device``), with ``tvl1``'s parameters.
- ``dis_flow``: OpenCV's Dense Inverse Search (``dis``), its presets and tunables.
- ``raft``: torchvision's RAFT (``raft``), a batched network method that needs weights.
- ``on_grid``: :func:`flow_on_grid` (a video's grid pairs, quantised as they are computed) and
  the thread budget of a worker process (:func:`thread_budget`,
  :func:`configure_worker_threads`).

This package registers the methods: :data:`FLOW_METHODS` is built below from the classes it
imports at the top, in one list; no module registers itself by being imported.
:func:`make_method` and :func:`method_param_fields` are the registry's public face. Importing
the package imports neither ``cv2`` nor ``torch``: the CLI imports it to build its options, and
``vidfeat --help`` must stay fast.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vidfeat.cores import available_cores
from vidfeat.flow.base import (
    FlowMethod,
    option_name,
    param_choices,
    param_default_text,
    param_type,
)
from vidfeat.flow.dis_flow import DIS, DISParams
from vidfeat.flow.on_grid import configure_worker_threads, flow_on_grid, thread_budget, to_gray
from vidfeat.flow.opencv import FARNEBACK_GAUSSIAN, TVL1, Farneback, FarnebackParams, TVL1Params
from vidfeat.flow.quant import DEFAULT_BOUND, dequantize, quantize, quantize_pair, to_network_input
from vidfeat.flow.raft import RAFT, RAFTParams
from vidfeat.flow.tvl1_torch import TVL1Torch
from vidfeat.registry import Registry


def _registry(*methods: type[FlowMethod]) -> Registry[type[FlowMethod]]:
    reg: Registry[type[FlowMethod]] = Registry("flow method")
    for m in methods:
        reg.register(m.name)(m)
    return reg


# every method, in one place; a method of one's own joins with FLOW_METHODS.register(name)
FLOW_METHODS = _registry(TVL1, TVL1Torch, Farneback, DIS, RAFT)


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


def check_params(name: str, params: dict[str, Any]) -> None:
    """Refuse, by flag, the parameters of another method than ``name`` (before any work: the
    command line checks them before it reads its inputs)."""
    FLOW_METHODS.get(name).refuse_foreign(params)


def configure(
    name: str,
    params: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    *,
    applicable_only: bool = False,
) -> FlowMethod:
    """``--method name`` as a run asks for it: its parameters (``params``; a parameter of
    another method is refused by flag, the others keep OpenCV's defaults) and its run-time
    settings (``runtime``: ``device``, ``batch_size``, ``weights``, ``precision``, None = not
    given), which a
    method they do not apply to refuses with the reason. ``applicable_only``: a CPU method
    ignores ``device`` and ``batch_size`` instead (they were given for a flow network that
    reads the fields, not for the method)."""
    method = make_method(name, **(params or {}))
    settings = {k: v for k, v in (runtime or {}).items() if v is not None}
    if applicable_only and not method.uses_torch:
        settings.pop("device", None)
        settings.pop("batch_size", None)
    if applicable_only and settings.get("precision") not in (None, *method.precisions):
        settings.pop("precision")  # the network's precision; the method keeps its own
    return method.runtime(**settings)


__all__ = [
    "DEFAULT_BOUND",
    "DIS",
    "DISParams",
    "FARNEBACK_GAUSSIAN",
    "FLOW_METHODS",
    "Farneback",
    "FarnebackParams",
    "FlowMethod",
    "RAFT",
    "RAFTParams",
    "TVL1",
    "TVL1Params",
    "TVL1Torch",
    "available_cores",
    "check_params",
    "configure",
    "configure_worker_threads",
    "dequantize",
    "flow_on_grid",
    "make_method",
    "method_param_fields",
    "option_name",
    "param_choices",
    "param_default_text",
    "param_type",
    "quantize",
    "quantize_pair",
    "thread_budget",
    "to_gray",
    "to_network_input",
]
