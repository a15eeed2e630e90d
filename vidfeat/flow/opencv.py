"""The OpenCV methods computed one pair per call on the CPU: Dual TV-L1 (``--method tvl1``,
OpenCV contrib ``optflow``) and Farneback (``--method farneback``, OpenCV core ``video``), each
with its parameter dataclass beside it.

:class:`TVL1Params` is also the parameter set of the PyTorch port
(:class:`~vidfeat.flow.tvl1_torch.TVL1Torch`): one set of options, one set of defaults. DIS,
OpenCV's too, has a module of its own for its presets (:mod:`~vidfeat.flow.dis_flow`).

``cv2`` is imported inside the methods that need it: the CLI imports :mod:`vidfeat.flow` to
build its options, and ``vidfeat --help`` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.flow.base import FlowMethod, _at_least, _opt, _positive

# Farneback's `flags`: only the Gaussian window is meaningful here. OPTFLOW_USE_INITIAL_FLOW (4)
# needs a previous flow field as input, which grid pairs do not have.
FARNEBACK_GAUSSIAN = 256


# --------------------------------------------------------------------------- TV-L1


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


# --------------------------------------------------------------------------- Farneback


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
