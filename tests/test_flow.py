"""vidfeat.flow: both methods recover known motion, OpenCV's defaults, grid pairs only,
quantisation error bounds, option validation, pickling for worker processes."""

from __future__ import annotations

import dataclasses
import pickle
import threading

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
    quantize,
    to_gray,
    to_network_input,
)

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
@pytest.mark.parametrize("method", ["tvl1", "farneback"])
@pytest.mark.parametrize("shift", [(2.0, -1.0), (1.5, 0.5)])
@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_recovers_a_known_translation(
    method: str, shift: tuple[float, float], noise: float
) -> None:
    base = texture()
    a, b = to_u8(base, shifted(base, *shift), noise=noise)
    flow = make_method(method).calc(a, b)
    assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    inner = flow[16:-16, 16:-16]
    epe = np.linalg.norm(inner - np.array(shift, dtype=np.float32), axis=-1)
    assert epe.mean() < 0.1, (method, shift, noise, epe.mean())
    assert np.percentile(epe, 95) < 0.25, (method, shift, noise, np.percentile(epe, 95))


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
    for name in FLOW_METHODS.names():
        m = make_method(name, nscales=2) if name == "tvl1" else make_method(name)
        out = flow_on_grid(grid, m)
        assert out.shape == (2, 2, 2, 48, 48) and out.dtype == np.float32
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
            assert type(f.default) in (int, float), (name, f.name)
    opts = {option_name(f.name) for f in method_param_fields("tvl1")}
    assert {"--lambda", "--inner-iterations", "--median-filtering"} <= opts
    with pytest.raises(ConfigError, match="farneback, tvl1"):
        method_param_fields("lk")


def test_registry_names_and_unknown_method() -> None:
    assert FLOW_METHODS.names() == ["farneback", "tvl1"]
    with pytest.raises(ConfigError, match="choose one of: farneback, tvl1"):
        make_method("lk")


@pytest.mark.parametrize(
    "method, params, option",
    [
        ("tvl1", {"levels": 2}, "--levels does not apply to --method tvl1"),
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


@pytest.mark.parametrize("name", ["tvl1", "farneback"])
def test_pickling_round_trips_and_computes_the_same_flow(name: str) -> None:
    m = make_method(name, warps=2) if name == "tvl1" else make_method(name, levels=2)
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
    before = cv2.getNumThreads()
    try:
        configure_worker_threads(1)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
    with pytest.raises(ValueError):
        configure_worker_threads(0)
