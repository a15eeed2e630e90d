"""DIS optical flow (Dense Inverse Search, Kroeger et al. 2016; OpenCV core ``video``): the
fast CPU method, ``--method dis``. (The module is not named ``dis``: that is the standard
library's disassembler.)

A preset (``ultrafast``, ``fast`` — OpenCV's default — or ``medium``) and every tunable of
``cv2.DISOpticalFlow`` as parameters; the four a preset sets default to the preset's values and
are resolved when the method is built, so a set's set.json records what ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.flow.base import FlowMethod, _at_least, _opt, _positive, option_name

# DIS presets: OpenCV's enum values, and what each sets (DISOpticalFlowImpl::setPreset; the
# tests read them back from OpenCV). The other parameters are the same in every preset.
DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}
DIS_PRESET_VALUES = {
    "ultrafast": dict(
        finest_scale=2, patch_stride=4, gradient_descent_iterations=12,
        variational_refinement_iterations=0,
    ),
    "fast": dict(
        finest_scale=2, patch_stride=4, gradient_descent_iterations=16,
        variational_refinement_iterations=5,
    ),
    "medium": dict(
        finest_scale=1, patch_stride=3, gradient_descent_iterations=25,
        variational_refinement_iterations=5,
    ),
}  # fmt: skip
_PRESET = "the preset's"


@dataclass(frozen=True)
class DISParams:
    """``cv2.DISOpticalFlow`` parameters: a preset (OpenCV's default is ``fast``) and every
    tunable, each either OpenCV's value or, for the four a preset sets, the preset's."""

    preset: str = _opt(
        "fast",
        "DIS preset: ultrafast, fast or medium (slower, finer: full patch search one pyramid "
        "level further down)",
        choices=tuple(DIS_PRESETS),
    )
    finest_scale: int | None = _opt(
        None,
        "finest pyramid level computed (0: full resolution; ultrafast/fast 2, medium 1)",
        kind=int,
        default_text=_PRESET,
    )
    coarsest_scale: int = _opt(-1, "coarsest pyramid level (-1: from the frame size)")
    patch_size: int = _opt(8, "patch side in pixels")
    patch_stride: int | None = _opt(
        None,
        "stride between patches, 1..patch size (ultrafast/fast 4, medium 3)",
        kind=int,
        default_text=_PRESET,
    )
    gradient_descent_iterations: int | None = _opt(
        None,
        "patch gradient-descent iterations (ultrafast 12, fast 16, medium 25)",
        kind=int,
        default_text=_PRESET,
    )
    variational_refinement_iterations: int | None = _opt(
        None,
        "variational refinement iterations per level (0: off; ultrafast 0, fast/medium 5)",
        kind=int,
        default_text=_PRESET,
    )
    variational_refinement_alpha: float = _opt(20.0, "smoothness weight of the refinement")
    variational_refinement_delta: float = _opt(5.0, "colour-constancy weight of the refinement")
    variational_refinement_gamma: float = _opt(10.0, "gradient-constancy weight of the refinement")
    variational_refinement_epsilon: float = _opt(
        0.01, "norm epsilon of the refinement's robust penaliser"
    )
    use_mean_normalization: bool = _opt(
        True, "normalise patch means (robust to illumination changes)"
    )
    use_spatial_propagation: bool = _opt(
        True, "propagate good patch matches to neighbours (usually better flow)"
    )


class DIS(FlowMethod):
    """Dense Inverse Search (Kroeger et al. 2016; OpenCV core ``video``): the fast CPU
    method. Its OpenCV object is created once per process/thread and reused; it is always
    called without an initial flow (a buffer of the right size would be taken as one)."""

    name = "dis"
    params_cls = DISParams
    out_buffer = False  # DIS would read a given flow buffer as its initial flow

    def resolve(self, params: Any) -> Any:
        preset = DIS_PRESET_VALUES[params.preset]
        unset = {k: v for k, v in preset.items() if getattr(params, k) is None}
        return dataclasses.replace(params, **unset)

    def validate(self) -> None:
        p = self.params
        # a negative finest scale makes OpenCV allocate petabytes; a patch stride of 0 or
        # above the patch size, a patch size or refinement epsilon of 0 crash the process;
        # negative refinement weights diverge (flow of 1e16 px), 0 descent iterations give
        # the coarse initial flow only: none is caught by OpenCV
        _at_least(p, 0, "finest_scale", "variational_refinement_iterations")
        _at_least(p, 1, "patch_size", "patch_stride", "gradient_descent_iterations")
        if p.coarsest_scale < -1:
            raise ConfigError(f"--coarsest-scale must be >= -1 (got {p.coarsest_scale})")
        if p.patch_stride > p.patch_size:
            raise ConfigError(
                f"--patch-stride must be <= --patch-size (got {p.patch_stride} > {p.patch_size})"
            )
        for n in ("variational_refinement_alpha", "variational_refinement_delta"):
            if getattr(p, n) < 0:
                raise ConfigError(f"{option_name(n)} must be >= 0 (got {getattr(p, n)})")
        if p.variational_refinement_gamma < 0:
            raise ConfigError(
                f"--variational-refinement-gamma must be >= 0 (got "
                f"{p.variational_refinement_gamma})"
            )
        _positive(p, "variational_refinement_epsilon")

    def cv_object(self) -> Any:
        """This thread's ``cv2.DISOpticalFlow``, created on first use."""
        obj = getattr(self._local, "cv", None)
        if obj is None:
            import cv2

            p = self.params
            obj = cv2.DISOpticalFlow_create(DIS_PRESETS[p.preset])
            obj.setFinestScale(p.finest_scale)
            obj.setCoarsestScale(p.coarsest_scale)
            obj.setPatchSize(p.patch_size)
            obj.setPatchStride(p.patch_stride)
            obj.setGradientDescentIterations(p.gradient_descent_iterations)
            obj.setVariationalRefinementIterations(p.variational_refinement_iterations)
            obj.setVariationalRefinementAlpha(p.variational_refinement_alpha)
            obj.setVariationalRefinementDelta(p.variational_refinement_delta)
            obj.setVariationalRefinementGamma(p.variational_refinement_gamma)
            obj.setVariationalRefinementEpsilon(p.variational_refinement_epsilon)
            obj.setUseMeanNormalization(p.use_mean_normalization)
            obj.setUseSpatialPropagation(p.use_spatial_propagation)
            self._local.cv = obj
        return obj

    def _calc(self, prev: np.ndarray, nxt: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        f = self.cv_object().calc(prev, nxt, None)
        if out is None:
            return f
        out[...] = f
        return out
