"""vidfeat.flow: the OpenCV methods recover known motion, OpenCV's defaults, grid pairs only,
quantisation error bounds, option validation, pickling for worker processes; DIS parity with
OpenCV; RAFT (random weights) shapes and pipeline, its refusal without weights; --device and
--batch-size per method; the thread budget in worker processes; the fields' compression."""

from __future__ import annotations

import dataclasses
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from vidfeat.errors import ConfigError
from vidfeat.flow import (
    FLOW_METHODS,
    configure_worker_threads,
    dequantize,
    flow_on_grid,
    make_method,
    method_param_fields,
    option_name,
    param_choices,
    param_type,
    quantize,
    thread_budget,
    to_gray,
    to_network_input,
)

CPU_METHODS = ["dis", "farneback", "tvl1"]  # OpenCV, one pair per call

TVL1_GETTERS = {
    "tau": "getTau",
    "lambda_": "getLambda",
    "theta": "getTheta",
    "nscales": "getScalesNumber",
    "warps": "getWarpingsNumber",
    "epsilon": "getEpsilon",
    "inner_iterations": "getInnerIterations",
    "outer_iterations": "getOuterIterations",
    "scale_step": "getScaleStep",
    "gamma": "getGamma",
    "median_filtering": "getMedianFiltering",
}


def texture(size: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth random texture (Gaussian-blurred noise), float32 in about [80, 175]."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.0)


def shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``img`` moved by (+dx, +dy): out[y, x] = img[y - dy, x - dx] (bicubic, reflected)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(
        img, m, img.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )


def to_u8(*imgs: np.ndarray, noise: float = 0.0, seed: int = 1) -> list[np.ndarray]:
    """Stretch to 0..255 with one shared range (no fake brightness change between frames),
    plus optional Gaussian sensor noise, independent per frame."""
    lo, hi = min(i.min() for i in imgs), max(i.max() for i in imgs)
    rng = np.random.default_rng(seed)
    out = []
    for i in imgs:
        v = (i - lo) / (hi - lo) * 255 + rng.normal(0, noise, i.shape)
        out.append(np.clip(np.rint(v), 0, 255).astype(np.uint8))
    return out


# Measured (OpenCV 5.0, 128×128, crop 16 px) mean end-point errors:
#   clean:       tvl1 0.003 / 0.006, farneback 0.000 / 0.006   for (2, -1) / (1.5, 0.5)
#   noise σ=2:   tvl1 0.012 / 0.018, farneback 0.019 / 0.019
# A sign or axis swap would give >= 2 px; 0.1 px leaves >= 5x margin for other OpenCV builds.
#   dis medium:  0.012 / 0.053 (σ=2: 0.014 / 0.050); fast: 0.10 / 0.15; ultrafast: 0.11 / 0.12
#   (fast and ultrafast stop at 1/4 resolution: finest scale 2)
@pytest.mark.parametrize(
    "method, limits",
    [
        ("tvl1", (0.1, 0.25)),
        ("farneback", (0.1, 0.25)),
        ("dis", (0.25, 0.4)),  # the default preset, fast
        ("dis:medium", (0.1, 0.25)),
        ("dis:ultrafast", (0.25, 0.4)),
    ],
)
@pytest.mark.parametrize("shift", [(2.0, -1.0), (1.5, 0.5)])
@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_recovers_a_known_translation(
    method: str, limits: tuple[float, float], shift: tuple[float, float], noise: float
) -> None:
    base = texture()
    a, b = to_u8(base, shifted(base, *shift), noise=noise)
    name, _, preset = method.partition(":")
    flow = (make_method(name, preset=preset) if preset else make_method(name)).calc(a, b)
    assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    inner = flow[16:-16, 16:-16]
    epe = np.linalg.norm(inner - np.array(shift, dtype=np.float32), axis=-1)
    assert epe.mean() < limits[0], (method, shift, noise, epe.mean())
    assert np.percentile(epe, 95) < limits[1], (method, shift, noise, np.percentile(epe, 95))


def test_quantize_round_trip_within_bound_over_255() -> None:
    rng = np.random.default_rng(0)
    for bound in (20.0, 5.0):
        f = rng.uniform(-bound, bound, size=(4, 3, 1000)).astype(np.float32)
        f[0, 0, :3] = [-bound, 0.0, bound]
        q = quantize(f, bound)
        assert q.dtype == np.uint8 and q.shape == f.shape
        err = np.abs(dequantize(q, bound) - f)
        assert err.max() <= bound / 255 + 1e-5
        assert err.max() > 0.9 * bound / 255  # the bound is tight, not loose
    # the convention: -bound ↔ 0, +bound ↔ 255; outside values clip to the ends
    assert quantize(np.array([-100.0, -20.0, 20.0, 100.0, np.inf]), 20.0).tolist() == [
        0,
        0,
        255,
        255,
        255,
    ]
    assert np.allclose(dequantize(quantize(np.array([-1e6, 1e6])), 20.0), [-20, 20])
    assert np.allclose(dequantize(np.array([0, 255], np.uint8), 20.0), [-20, 20])
    assert dequantize(np.zeros(3, np.uint8)).dtype == np.float32
    assert quantize(np.array([np.nan]))[0] == 128  # NaN stored as zero flow
    # more values than one internal chunk, float64 input
    big = rng.uniform(-30, 30, size=(1 << 20) + 7)
    ref = np.rint((np.clip(big, -20, 20) + 20) * 255 / 40).astype(np.uint8)
    assert np.abs(quantize(big).astype(int) - ref).max() <= 1  # ties may round either way


def test_network_input_range() -> None:
    q = np.arange(256, dtype=np.uint8)
    x = to_network_input(q)
    assert x.dtype == np.float32
    assert x[0] == -1.0 and x[-1] == 1.0 and abs(x[128]) < 0.01
    assert np.allclose(x, dequantize(q, 7.0) / 7.0, atol=1e-6)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_bound_names_the_option(bound: float) -> None:
    with pytest.raises(ConfigError, match="--bound"):
        quantize(np.zeros(3), bound)
    with pytest.raises(ConfigError, match="--bound"):
        dequantize(np.zeros(3, np.uint8), bound)


def test_flow_on_grid_computes_exactly_the_grid_pairs() -> None:
    frames = np.stack(to_u8(*(shifted(texture(48), s, 0) for s in range(3))))
    grid = np.stack([frames, frames[::-1]])  # (T=2, N+1=3, H=48, W=48)
    for name in CPU_METHODS:
        m = make_method(name, nscales=2) if name == "tvl1" else make_method(name)
        out = flow_on_grid(grid, m)
        assert out.shape == (2, 2, 2, 48, 48) and out.dtype == np.float32
        # quantised as computed: exactly the float grid quantised
        assert np.array_equal(flow_on_grid(grid, m, bound=20.0), quantize(out, 20.0)), name
        for t in range(2):
            for j in range(2):
                ref = m.calc(grid[t, j], grid[t, j + 1])
                assert np.array_equal(out[t, j, 0], ref[..., 0]), (name, t, j)
                assert np.array_equal(out[t, j, 1], ref[..., 1]), (name, t, j)
        # the texture moves right by 1 px per frame in segment 0, left in segment 1
        assert out[0, :, 0, 8:-8, 8:-8].mean() == pytest.approx(1.0, abs=0.1)
        assert out[1, :, 0, 8:-8, 8:-8].mean() == pytest.approx(-1.0, abs=0.1)


def test_flow_on_grid_reuses_repeated_index_pairs() -> None:
    """A short video's overlapping segments repeat pairs: with indices, each is computed once."""
    frames = to_u8(*(shifted(texture(32), s, 0) for s in range(4)))
    idx = np.array([[0, 1, 2], [1, 2, 3], [1, 2, 3]])  # pairs (1,2) ×2 and (2,3) ×2 repeat
    grid = np.stack([[frames[i] for i in row] for row in idx])
    m = make_method("farneback")
    calls = []

    class Counting(type(m)):
        def _calc(self, prev, nxt, out):
            calls.append(1)
            return super()._calc(prev, nxt, out)

    counting = Counting()
    reused = flow_on_grid(grid, counting, indices=idx)
    assert len(calls) == 3  # (0,1), (1,2), (2,3)
    assert np.array_equal(reused, flow_on_grid(grid, m))
    with pytest.raises(ValueError, match="indices"):
        flow_on_grid(grid, m, indices=idx[:2])


def test_flow_on_grid_on_threads_gives_the_same_fields() -> None:
    """Pairs computed at once on several threads (a worker's thread budget): the same fields,
    each segment handed over only once ``ready`` says its frames are there."""
    grid = moving_grid(T=3, n1=4, size=48)
    for name in CPU_METHODS:
        m = make_method(name, nscales=2) if name == "tvl1" else make_method(name)
        one = flow_on_grid(grid, m, bound=20.0)
        asked: list[int] = []
        many = flow_on_grid(grid, m, bound=20.0, threads=3, ready=asked.append)
        assert np.array_equal(one, many), name
        assert asked == [0, 1, 2]
    with pytest.raises(ValueError, match="threads"):
        flow_on_grid(grid, make_method("dis"), threads=0)


def test_flow_on_grid_on_threads_stops_at_the_first_error() -> None:
    import time

    grid = moving_grid(T=4, n1=4, size=32)
    started: list[tuple[int, int]] = []

    class FailsOnSegment1(type(make_method("farneback"))):
        def _calc(self, prev, nxt, out):
            started.append((0, 0))
            if np.array_equal(prev, grid[1, 0]):
                raise RuntimeError("pair failed")
            time.sleep(0.02)  # the other pairs take a while: the failure overtakes them
            return super()._calc(prev, nxt, out)

    with pytest.raises(RuntimeError, match="pair failed"):
        flow_on_grid(grid, FailsOnSegment1(), threads=2)
    # segment 0's 3 pairs, the failing one, and the other thread's pair(s) in flight: most of
    # the 12 never start
    assert 4 <= len(started) <= 8

    def ready(t: int) -> None:  # the decoder failed before segment 2's frames
        if t == 2:
            raise OSError("decode failed")

    with pytest.raises(OSError, match="decode failed"):
        flow_on_grid(grid, make_method("farneback"), threads=2, ready=ready)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 1, 8, 8), np.uint8),  # N = 0: no pairs
        np.zeros((2, 3, 8, 8, 3), np.uint8),  # colour, not gray
        np.zeros((2, 3, 8, 8), np.float32),  # not uint8
    ],
)
def test_flow_on_grid_rejects_bad_frames(frames: np.ndarray) -> None:
    with pytest.raises(ValueError, match="flow_on_grid"):
        flow_on_grid(frames, make_method("farneback"))


def test_calc_rejects_bad_frames() -> None:
    m = make_method("farneback")
    with pytest.raises(ValueError, match="uint8"):
        m.calc(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="grayscale"):
        m.calc(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        make_method("raft").calc(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))


def test_defaults_are_opencvs() -> None:
    tv = cv2.optflow.DualTVL1OpticalFlow_create()
    p = make_method("tvl1").params
    assert {f.name for f in dataclasses.fields(p)} == set(TVL1_GETTERS)
    for name, getter in TVL1_GETTERS.items():
        assert getattr(p, name) == pytest.approx(getattr(tv, getter)()), name
    assert tv.getUseInitialFlow() is False
    # calcOpticalFlowFarneback has no defaults; OpenCV's documented example values
    fb = make_method("farneback").params
    assert dataclasses.asdict(fb) == dict(
        pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
    )


def test_every_tvl1_parameter_reaches_opencv() -> None:
    changed = dict(
        tau=0.2,
        lambda_=0.1,
        theta=0.4,
        nscales=3,
        warps=2,
        epsilon=0.02,
        inner_iterations=7,
        outer_iterations=4,
        scale_step=0.6,
        gamma=0.1,
        median_filtering=3,
    )
    obj = make_method("tvl1", **changed).cv_object()
    for name, getter in TVL1_GETTERS.items():
        assert getattr(obj, getter)() == pytest.approx(changed[name]), name


def test_every_farneback_parameter_reaches_opencv() -> None:
    a, b = to_u8(texture(64), shifted(texture(64), 1.5, -0.5))
    p = dict(pyr_scale=0.6, levels=2, winsize=9, iterations=2, poly_n=7, poly_sigma=1.5, flags=256)
    ref = cv2.calcOpticalFlowFarneback(a, b, None, *p.values())
    assert np.array_equal(make_method("farneback", **p).calc(a, b), ref)


def test_param_fields_drive_the_cli() -> None:
    for name in FLOW_METHODS.names():
        fields = method_param_fields(name)
        assert fields, name
        for f in fields:
            assert f.metadata.get("help"), (name, f.name)
            assert param_type(f) in (int, float, bool, str), (name, f.name)
            assert (param_type(f) is str) == (param_choices(f) is not None), (name, f.name)
            assert f.default is None or isinstance(f.default, param_type(f)), (name, f.name)
    opts = {option_name(f.name) for f in method_param_fields("tvl1")}
    assert {"--lambda", "--inner-iterations", "--median-filtering"} <= opts
    assert param_choices(method_param_fields("dis")[0]) == ("ultrafast", "fast", "medium")
    # no option is shared by two methods with different meanings (tvl1-torch is TV-L1 itself:
    # it shares tvl1's parameter class, so every option means the same)
    classes = {FLOW_METHODS.get(n).params_cls for n in FLOW_METHODS.names()}
    every = [option_name(f.name) for c in classes for f in dataclasses.fields(c)]
    assert len(every) == len(set(every))
    assert FLOW_METHODS.get("tvl1-torch").params_cls is FLOW_METHODS.get("tvl1").params_cls
    with pytest.raises(ConfigError, match="dis, farneback, raft, tvl1, tvl1-torch"):
        method_param_fields("lk")


def test_registry_names_and_unknown_method() -> None:
    assert FLOW_METHODS.names() == ["dis", "farneback", "raft", "tvl1", "tvl1-torch"]
    with pytest.raises(ConfigError, match="choose one of: dis, farneback, raft, tvl1, tvl1-torch"):
        make_method("lk")


def test_the_package_registers_every_method_without_cv2_or_torch() -> None:
    """``import vidfeat.flow`` (what the CLI does to build its options) registers every method
    and imports neither OpenCV nor torch; torch comes with the first tvl1-torch or RAFT run."""
    import subprocess
    import sys

    code = (
        "import sys, vidfeat.flow as f; "
        "print(f.FLOW_METHODS.names(), 'cv2' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("]")[1].split() == ["False", "False"], out.stdout
    assert "'tvl1-torch'" in out.stdout and "'raft'" in out.stdout


def test_the_package_docstring_names_its_modules() -> None:
    """Every module of vidfeat/flow is named in the package's docstring, and none is named
    after a standard-library module (``dis``)."""
    import sys

    import vidfeat.flow

    modules = sorted(p.stem for p in Path(vidfeat.flow.__file__).parent.glob("[!_]*.py"))
    assert {"base", "on_grid", "opencv", "quant", "raft", "tvl1_torch"} <= set(modules)
    assert [m for m in modules if f"``{m}``" not in (vidfeat.flow.__doc__ or "")] == []
    assert [m for m in modules if m in sys.stdlib_module_names] == []


@pytest.mark.parametrize(
    "method, params, option",
    [
        ("tvl1", {"levels": 2}, "--levels do not apply to --method tvl1"),
        ("farneback", {"tau": 0.1, "lambda_": 1}, "--lambda, --tau do not apply"),
        ("tvl1", {"scale_step": 1.5}, "--scale-step"),
        ("tvl1", {"theta": 0.0}, "--theta must be > 0"),
        ("tvl1", {"lambda_": -1.0}, "--lambda must be > 0"),
        ("tvl1", {"nscales": 0}, "--nscales must be >= 1"),
        ("tvl1", {"median_filtering": 4}, "--median-filtering"),
        ("tvl1", {"warps": 2.5}, "--warps must be an integer"),
        ("tvl1", {"tau": "fast"}, "--tau must be a number"),
        ("tvl1", {"tau": float("nan")}, "--tau must be finite"),
        ("farneback", {"pyr_scale": 1.0}, "--pyr-scale"),
        ("farneback", {"winsize": 0}, "--winsize must be >= 1"),
        ("farneback", {"poly_sigma": 0}, "--poly-sigma must be > 0"),
        ("farneback", {"flags": 4}, "--flags must be 0 or 256"),
        ("dis", {"preset": "slow"}, "--preset must be one of ultrafast, fast, medium"),
        ("dis", {"finest_scale": -1}, "--finest-scale must be >= 0"),
        ("dis", {"patch_stride": 9}, "--patch-stride must be <= --patch-size"),
        ("dis", {"patch_stride": 0}, "--patch-stride must be >= 1"),
        ("dis", {"patch_size": 0}, "--patch-size must be >= 1"),
        ("dis", {"gradient_descent_iterations": 0}, "--gradient-descent-iterations must be >= 1"),
        ("dis", {"variational_refinement_epsilon": 0.0}, "--variational-refinement-epsilon"),
        ("dis", {"variational_refinement_alpha": -1.0}, "--variational-refinement-alpha"),
        ("dis", {"coarsest_scale": -2}, "--coarsest-scale must be >= -1"),
        ("dis", {"use_mean_normalization": 2}, "--use-mean-normalization must be true or false"),
        ("raft", {"model": "huge"}, "--model must be one of large, small"),
        ("raft", {"num_flow_updates": 0}, "--num-flow-updates must be >= 1"),
        ("raft", {"tau": 0.1}, "--tau do not apply to --method raft"),
    ],
)
def test_bad_options_name_the_option(method: str, params: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        make_method(method, **params)


def test_config_round_trips_through_json_types() -> None:
    m = make_method("tvl1", warps=3.0, tau=1)  # JSON may hand back 3.0 / 1
    assert m.params.warps == 3 and type(m.params.warps) is int
    assert type(m.params.tau) is float
    import json

    again = make_method("tvl1", **json.loads(json.dumps(m.config())))
    assert again == m and again.config() == m.config()


@pytest.mark.parametrize("name", CPU_METHODS)
def test_pickling_round_trips_and_computes_the_same_flow(name: str) -> None:
    params = {"tvl1": {"warps": 2}, "farneback": {"levels": 2}, "dis": {"preset": "medium"}}
    m = make_method(name, **params[name])
    a, b = to_u8(texture(64), shifted(texture(64), 1, 0))
    ref = m.calc(a, b)  # after use: a live cv2 object must not break pickling
    m2 = pickle.loads(pickle.dumps(m))
    assert type(m2) is type(m) and m2.name == name and m2.config() == m.config()
    assert np.array_equal(m2.calc(a, b), ref)
    assert np.array_equal(m.calc(a, b), ref)  # a reused OpenCV object carries no state


def test_tvl1_object_per_thread() -> None:
    m = make_method("tvl1")
    objs = [m.cv_object()]
    th = threading.Thread(target=lambda: objs.append(m.cv_object()))
    th.start()
    th.join()
    assert objs[0] is m.cv_object() and objs[1] is not objs[0]


def test_to_gray_matches_opencv() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 10, 3), dtype=np.uint8)
    g = to_gray(rgb)
    assert g.shape == (2, 3, 8, 10) and g.dtype == np.uint8
    for t in range(2):
        for j in range(3):
            assert np.array_equal(g[t, j], cv2.cvtColor(rgb[t, j], cv2.COLOR_RGB2GRAY))
    assert to_gray(rgb[0, 0]).shape == (8, 10)
    assert to_gray(np.zeros((0, 8, 10, 3), np.uint8)).shape == (0, 8, 10)
    with pytest.raises(ValueError, match="RGB"):
        to_gray(np.zeros((8, 10), np.uint8))


def test_configure_worker_threads() -> None:
    import torch

    before, tbefore = cv2.getNumThreads(), torch.get_num_threads()
    try:
        configure_worker_threads(1)
        assert cv2.getNumThreads() == 1
        configure_worker_threads(2, torch=True)
        assert cv2.getNumThreads() == 2 and torch.get_num_threads() == 2
    finally:
        cv2.setNumThreads(before)
        torch.set_num_threads(tbefore)
    with pytest.raises(ValueError):
        configure_worker_threads(0)
    cores = thread_budget(1)
    assert cores >= 1 and thread_budget(2) == max(1, cores // 2) and thread_budget(10**6) == 1


# --------------------------------------------------------------------------- DIS

DIS_GETTERS = {
    "finest_scale": "getFinestScale",
    "coarsest_scale": "getCoarsestScale",
    "patch_size": "getPatchSize",
    "patch_stride": "getPatchStride",
    "gradient_descent_iterations": "getGradientDescentIterations",
    "variational_refinement_iterations": "getVariationalRefinementIterations",
    "variational_refinement_alpha": "getVariationalRefinementAlpha",
    "variational_refinement_delta": "getVariationalRefinementDelta",
    "variational_refinement_gamma": "getVariationalRefinementGamma",
    "variational_refinement_epsilon": "getVariationalRefinementEpsilon",
    "use_mean_normalization": "getUseMeanNormalization",
    "use_spatial_propagation": "getUseSpatialPropagation",
}


def moving_grid(T: int = 2, n1: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 gray ``(T, n1, size, size)``: a texture moving by a different sub-pixel shift in
    every frame, with sensor noise (each pair a different motion)."""
    base = texture(size, seed)
    shifts = [(0.7 * k, -0.4 * k * (-1) ** k) for k in range(T * n1)]
    frames = to_u8(*(shifted(base, dx, dy) for dx, dy in shifts), noise=1.5, seed=seed)
    return np.stack(frames).reshape(T, n1, size, size)


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_dis_parameters_are_opencvs_preset_values(preset: str) -> None:
    from vidfeat.flow.dis_flow import DIS_PRESETS

    cv = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    p = make_method("dis", preset=preset).params
    assert {f.name for f in dataclasses.fields(p)} == set(DIS_GETTERS) | {"preset"}
    for name, getter in DIS_GETTERS.items():
        assert getattr(p, name) == pytest.approx(getattr(cv, getter)(), rel=1e-6), name
    # DISOpticalFlow_create() without a preset is FAST: so is the method without one
    assert make_method("dis") == make_method("dis", preset="fast")
    assert cv2.DISOpticalFlow_create().getGradientDescentIterations() == 16


def test_every_dis_parameter_reaches_opencv() -> None:
    changed = dict(
        finest_scale=0,
        coarsest_scale=3,
        patch_size=6,
        patch_stride=2,
        gradient_descent_iterations=7,
        variational_refinement_iterations=3,
        variational_refinement_alpha=10.0,
        variational_refinement_delta=2.0,
        variational_refinement_gamma=4.0,
        variational_refinement_epsilon=0.05,
        use_mean_normalization=False,
        use_spatial_propagation=False,
    )
    m = make_method("dis", preset="ultrafast", **changed)
    obj = m.cv_object()
    for name, getter in DIS_GETTERS.items():
        assert getattr(obj, getter)() == pytest.approx(changed[name], rel=1e-6), name
    import json  # the set.json round trip keeps every value, booleans and the preset included

    assert make_method("dis", **json.loads(json.dumps(m.config()))) == m


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_dis_parity_with_opencv_on_the_same_pairs(preset: str) -> None:
    """flow_on_grid (one DIS object reused over the pairs, fields quantised as computed) gives
    exactly what calling OpenCV directly gives on the same pairs."""
    from vidfeat.flow.dis_flow import DIS_PRESETS

    grid = moving_grid()
    cv = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    ref = np.empty((2, 3, 2, 64, 64), np.float32)
    for t in range(2):
        for j in range(3):
            f = cv.calc(grid[t, j], grid[t, j + 1], None)
            ref[t, j] = f.transpose(2, 0, 1)
    m = make_method("dis", preset=preset)
    assert np.array_equal(flow_on_grid(grid, m), ref)
    assert np.array_equal(flow_on_grid(grid, m, bound=20.0), quantize(ref, 20.0))
    # why DIS never gets a reused buffer: OpenCV takes one of the right size as initial flow
    a, b = grid[0, 1], grid[0, 2]
    assert not np.array_equal(cv.calc(a, b, ref[0, 0].transpose(1, 2, 0).copy()), ref[0, 1])


# --------------------------------------------------------------------------- RAFT


@pytest.fixture(scope="module")
def raft_random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --flow-weights file of raft_small with random (seeded) weights: for shapes and the
    pipeline only, its flow means nothing."""
    import torch
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


@pytest.fixture
def empty_hub(tmp_path: Path) -> Iterator[Path]:
    """torch.hub's cache moved to an empty folder (no torchvision weights in it)."""
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(old)


def one_video(tmp_path: Path, n: int = 20, h: int = 64, w: int = 80) -> Path:
    """A list of one H.264 video of ``n`` moving frames; returns the list."""
    from conftest import moving_frames
    from vidfeat.synth import write_mp4

    video = tmp_path / "v.mp4"
    write_mp4(video, moving_frames(n, h, w, seed=5), 25, None)
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{video}\n")
    return listing


def test_raft_refuses_without_weights_naming_both_ways(empty_hub: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vidfeat import cli

    for model, file in [
        ("large", "raft_large_C_T_SKHT_V2-ff5fadd5.pth"),
        ("small", "raft_small_C_T_V2-01064c6d.pth"),
    ]:
        with pytest.raises(ConfigError) as err:
            make_method("raft", model=model).provenance()
        msg = str(err.value)
        assert "--flow-weights FILE" in msg and str(empty_hub / "checkpoints" / file) in msg
        assert "nothing is downloaded" in msg
    store = tmp_path / "store"
    r = CliRunner().invoke(
        cli.main,
        ["extract", "flow", "--method", "raft", "--videos", str(one_video(tmp_path))]
        + ["--store", str(store), "--timeout", "0"],
    )
    assert r.exit_code != 0 and "needs weights" in r.output and "--flow-weights" in r.output
    assert not (store / "raft-fields" / "set.json").exists()  # refused before anything ran


def test_raft_finds_torchvisions_cache_and_checks_the_file(
    empty_hub: Path, raft_random_weights: Path
) -> None:
    import shutil

    cached = empty_hub / "checkpoints" / "raft_small_C_T_V2-01064c6d.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(raft_random_weights, cached)
    prov = make_method("raft", model="small").provenance()
    assert prov["method_weights_path"] == str(cached)
    import hashlib

    assert prov["method_weights"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="does not fit raft_large.*--model small"):
        make_method("raft").runtime(weights=raft_random_weights).provenance()
    with pytest.raises(ConfigError, match="no such file"):
        make_method("raft").runtime(weights=empty_hub / "nope.pth")


def test_raft_shapes_batches_and_padding_with_random_weights(raft_random_weights: Path) -> None:
    m = make_method("raft", model="small", num_flow_updates=2).runtime(
        weights=raft_random_weights, device="cpu", batch_size=2
    )
    rgb = np.random.default_rng(0).integers(0, 256, (4, 36, 44, 3), dtype=np.uint8)
    rgb = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in rgb])
    idx = np.array([[0, 1, 2], [1, 2, 3]])  # pair (1, 2) twice: 3 distinct pairs
    frames = rgb[idx]  # (T=2, N+1=3, 36, 44, 3): not multiples of 8 (padded, cropped back)
    calls: list[int] = []
    batch = m.calc_batch
    m.calc_batch = lambda a, b: (calls.append(len(a)), batch(a, b))[1]  # type: ignore[method-assign]
    out = flow_on_grid(frames, m, indices=idx)
    assert calls == [2, 1]  # --batch-size 2 chunks the video's 3 distinct pairs
    assert out.shape == (2, 2, 2, 36, 44) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.array_equal(out[1, 0], out[0, 1])  # the repeated pair is copied
    one = m.calc(frames[1, 1], frames[1, 2])  # a single pair: a batch of one
    assert one.shape == (36, 44, 2)
    assert np.allclose(one.transpose(2, 0, 1), out[1, 1], atol=1e-3)
    q = flow_on_grid(frames, m, indices=idx, bound=20.0)
    assert q.dtype == np.uint8 and np.abs(q.astype(int) - quantize(out, 20.0)).max() <= 1
    with pytest.raises(ValueError, match=r"\(T, N\+1, H, W, 3\) RGB"):
        flow_on_grid(frames[..., 0], m)


def test_raft_extraction_end_to_end_with_random_weights(
    raft_random_weights: Path, tmp_path: Path
) -> None:
    """`vidfeat extract flow --method raft` decodes RGB, runs batched on --device with
    --batch-size, stores uint8 fields and records the weights' digest."""
    import hashlib

    from click.testing import CliRunner

    from vidfeat import cli
    from vidfeat.store import FeatureStore

    store = tmp_path / "store"
    args = ["extract", "flow", "--method", "raft", "--model", "small", "--num-flow-updates", "1"]
    args += ["--flow-weights", str(raft_random_weights), "--device", "cpu", "--batch-size", "3"]
    args += ["-T", "2", "-N", "2", "--short-side", "64", "--timeout", "0"]
    args += ["--videos", str(one_video(tmp_path)), "--store", str(store)]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    s = FeatureStore(store).open_set("raft-fields")
    (vid,) = s.ids()
    f = s.features(vid)
    assert f.shape == (2, 2, 2, 64, 80) and f.dtype == np.uint8
    assert s.config["method_params"] == {"model": "small", "num_flow_updates": 1}
    sha = hashlib.sha256(raft_random_weights.read_bytes()).hexdigest()
    assert s.config["method_weights"] == sha


# --------------------------------------------------------------------------- run-time options


@pytest.mark.parametrize("method", CPU_METHODS)
def test_device_and_batch_size_are_refused_by_cpu_methods(method: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vidfeat import cli

    m = make_method(method)
    with pytest.raises(ConfigError, match=f"--device does not apply to --method {method}: Open"):
        m.runtime(device="cpu")
    with pytest.raises(ConfigError, match=f"--batch-size does not apply to --method {method}"):
        m.runtime(batch_size=8)
    with pytest.raises(ConfigError, match=f"--flow-weights does not apply to --method {method}"):
        m.runtime(weights="w.pth")
    m.runtime()  # nothing given: nothing refused
    listing = one_video(tmp_path, n=6)
    for opt in (["--device", "cpu"], ["--batch-size", "8"]):
        r = CliRunner().invoke(
            cli.main,
            ["extract", "flow", "--method", method, "--videos", str(listing)]
            + ["--store", str(tmp_path / "s"), *opt],
        )
        assert r.exit_code != 0 and f"{opt[0]} does not apply to --method {method}" in r.output


def test_device_and_batch_size_act_on_raft() -> None:
    m = make_method("raft")
    assert m.device == "auto" and m.batch_size is None
    m.runtime(device="cpu", batch_size=3)
    m2 = pickle.loads(pickle.dumps(m))  # reach the worker processes
    assert (m2.device, m2.batch_size) == ("cpu", 3) and m2 == make_method("raft")
    assert m.config() == {"model": "large", "num_flow_updates": 12}  # not parameters
    with pytest.raises(ConfigError, match="--batch-size must be an integer >= 1"):
        m.runtime(batch_size=0)
    # default: every pair of a video in one forward when it fits (2 GiB on the CPU)
    assert m.default_batch(64, 80) >= 125 and 1 <= m.default_batch(1080, 1920) < 5


# --------------------------------------------------------------------------- thread budget


_CALC_THREADS: set[int] = set()


class ThreadRecordingFarneback(type(make_method("farneback"))):
    """Farneback that notes which thread computed each pair."""

    def _calc(self, prev, nxt, out):
        import time

        _CALC_THREADS.add(threading.get_ident())
        time.sleep(0.005)  # a pair takes a while, as on real frames: the next one goes elsewhere
        return super()._calc(prev, nxt, out)


class ThreadsProbe:
    """Wraps an extractor; records OpenCV's and torch's thread counts where it runs, and how
    many threads computed the flow pairs."""

    def __init__(self, inner) -> None:
        self.inner, self.modality = inner, inner.modality

    def config(self) -> dict:
        return self.inner.config()

    def setup(self) -> None:
        self.inner.setup()

    def extract(self, record, class_index):
        import os

        import torch

        _CALC_THREADS.clear()
        res = self.inner.extract(record, class_index)
        res.attrs.update(
            cv2_threads=cv2.getNumThreads(),
            torch_threads=torch.get_num_threads(),
            pid=os.getpid(),
            flow_threads=len(_CALC_THREADS),
        )
        return res


def test_thread_budget_goes_to_pairs_in_the_worker_process(tmp_path: Path) -> None:
    """An OpenCV method spends the worker's budget on pairs computed at once (one OpenCV thread
    each: Farneback and DIS gain nothing from OpenCV's own threads)."""
    import os

    from vidfeat.extract import RunOptions, run_extraction
    from vidfeat.extract.fields import FlowFieldsExtractor, thread_budget_for
    from vidfeat.store import FeatureStore
    from vidfeat.videolist import load_list

    opts = RunOptions(workers=1, timeout=60.0, progress=False)  # one spawned worker process
    assert thread_budget_for(opts) == thread_budget(1)
    assert thread_budget_for(RunOptions(workers=10**6)) == 1
    assert thread_budget_for(RunOptions(engine="ray", ray_num_cpus=3.0)) == 3
    threads = 2  # what one worker gets on a 2-core machine (set here: CI may have more cores)
    ex = FlowFieldsExtractor(
        ThreadRecordingFarneback(), segments=4, frames=3, short_side=32, bound=20, threads=threads
    )
    rep = run_extraction(
        load_list(one_video(tmp_path, n=16)), ThreadsProbe(ex), tmp_path / "s", "f", opts
    )
    assert rep.done == 1
    s = FeatureStore(tmp_path / "s").open_set("f")
    attrs = s.attrs(s.ids()[0])
    assert attrs["pid"] != os.getpid() and attrs["cv2_threads"] == 1
    assert attrs["flow_threads"] == threads


def test_thread_budget_reaches_torch_for_a_network_method(raft_random_weights: Path) -> None:
    import torch

    from vidfeat.extract.fields import FlowFieldsExtractor

    m = make_method("raft", model="small").runtime(weights=raft_random_weights, device="cpu")
    before, tbefore = cv2.getNumThreads(), torch.get_num_threads()
    try:
        FlowFieldsExtractor(m, segments=1, frames=1, short_side=32, bound=20, threads=2).setup()
        assert cv2.getNumThreads() == 2 and torch.get_num_threads() == 2
    finally:
        cv2.setNumThreads(before)
        torch.set_num_threads(tbefore)


# --------------------------------------------------------------------------- extraction


def test_read_frames_reports_each_frame_as_it_is_decoded(bframe_video) -> None:
    from vidfeat.decode import read_frames

    seen: list[tuple[int, np.ndarray]] = []
    out = read_frames(
        bframe_video[0],
        [90, 3, 3, 5],
        short_side=32,
        gray=True,
        on_frame=lambda i, f: seen.append((i, f)),
    )
    assert [i for i, _ in seen] == [3, 5, 90]  # once per index, in decoding order
    for i, f in seen:
        assert np.array_equal(f, out[[90, 3, 3, 5].index(i)])


def test_decode_errors_and_flow_errors_cross_the_decoding_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from vidfeat.errors import CorruptVideoError
    from vidfeat.extract import fields as fields_mod
    from vidfeat.extract.fields import FlowFieldsExtractor
    from vidfeat.videolist import VideoRecord

    listing = one_video(tmp_path, n=30)
    rec = VideoRecord("v", Path(listing.read_text().split()[1]))
    real = fields_mod.read_frames
    delivered: list[int] = []

    def failing(path, indices, **kw):  # delivers two frames, then the file turns out broken
        def first_two(i, f):
            if len(delivered) == 2:
                raise CorruptVideoError(path, "broken at frame 7")
            delivered.append(i)
            kw["on_frame"](i, f)

        return real(path, indices, **{**kw, "on_frame": first_two})

    ex = FlowFieldsExtractor(
        make_method("farneback"), segments=3, frames=2, short_side=32, bound=20
    )
    monkeypatch.setattr(fields_mod, "read_frames", failing)
    with pytest.raises(CorruptVideoError, match="broken at frame 7"):
        ex.extract(rec, None)

    def slow(path, indices, **kw):  # a slow decoder: the flow side fails meanwhile
        def each(i, f):
            delivered.append(i)
            time.sleep(0.05)
            kw["on_frame"](i, f)

        return real(path, indices, **{**kw, "on_frame": each})

    class Boom(type(make_method("farneback"))):
        def _calc(self, prev, nxt, out):
            raise RuntimeError("flow failed")

    delivered.clear()
    monkeypatch.setattr(fields_mod, "read_frames", slow)
    ex = FlowFieldsExtractor(Boom(), segments=3, frames=2, short_side=32, bound=20)
    with pytest.raises(RuntimeError, match="flow failed"):
        ex.extract(rec, None)
    assert len(delivered) < 9  # the decoder stopped instead of decoding the rest


def test_flow_fields_compress_with_gzip_1_by_default_and_round_trip(tmp_path: Path) -> None:
    import h5py

    from vidfeat.store import FeatureStore, ShardWriter
    from vidfeat.store.writer import AUTO_GZIP_LEVEL

    q = flow_on_grid(moving_grid(), make_method("dis"), bound=20.0)
    fs = FeatureStore(tmp_path)
    fs.ensure_set("dis-fields", {"modality": "flow-fields"})
    with ShardWriter(fs.set_dir("dis-fields"), "job") as w:  # compression "auto", the default
        w.add("v", q, {})
    found = []
    for shard in fs.set_dir("dis-fields").glob("*.h5"):
        with h5py.File(shard) as f:
            f.visititems(
                lambda n, o: (
                    found.append((o.compression, o.compression_opts))
                    if isinstance(o, h5py.Dataset) and n.endswith("features")
                    else None
                )
            )
    assert found == [("gzip", 1)] and AUTO_GZIP_LEVEL == 1
    assert np.array_equal(FeatureStore(tmp_path).open_set("dis-fields").features("v"), q)
