from __future__ import annotations

import numpy as np
import pytest

from vidfeat.errors import ConfigError
from vidfeat.grid import SegmentGrid

CASES = [
    (L, T, N) for L in (1, 2, 5, 7, 24, 45, 100, 251) for T in (1, 3, 7, 25) for N in (1, 3, 5)
]


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("mode", ["test", "train"])
def test_every_grid_has_exactly_t_by_span_indices_inside_the_video(mode: str, pairs: bool) -> None:
    rng = np.random.default_rng(0)
    for L, T, N in CASES:
        g = SegmentGrid(T, N, mode, pairs=pairs).sample(L, 25.0, rng)
        span = N + 1 if pairs else N
        assert g.indices.shape == (T, span)
        assert g.indices.min() >= 0 and g.indices.max() <= L - 1
        # runs are consecutive frames (or the last frame repeated at the very end)
        steps = np.diff(g.indices, axis=1)
        assert set(np.unique(steps)) <= {0, 1}
        if L >= span:
            assert (steps == 1).all(), (L, T, N)


def test_test_mode_centres_the_run_in_its_segment() -> None:
    g = SegmentGrid(T=5, N=3, mode="test").sample(100, 25.0)
    # segment t = frames [20t, 20t+20): the centred 3-frame run starts at 20t + 8
    assert g.indices[:, 0].tolist() == [8, 28, 48, 68, 88]
    assert np.allclose(g.start, np.arange(5) * 0.8)
    assert np.allclose(g.end, np.arange(1, 6) * 0.8)
    assert np.allclose(g.centre, np.arange(5) * 0.8 + 0.4)


def test_flow_pairs_never_go_past_the_end() -> None:
    g = SegmentGrid(T=4, N=5, mode="test", pairs=True).sample(24, 10.0)
    assert g.indices.shape == (4, 6)
    assert g.indices.max() == 23
    assert (np.diff(g.indices, axis=1) == 1).all()


def test_train_mode_is_random_within_segments_and_seeded() -> None:
    grid = SegmentGrid(T=4, N=2, mode="train")
    a = grid.sample(200, 30.0, 7).indices
    b = grid.sample(200, 30.0, 7).indices
    assert (a == b).all()
    seen = {tuple(grid.sample(200, 30.0, s).indices[:, 0]) for s in range(20)}
    assert len(seen) > 10
    for s in range(20):
        idx = grid.sample(200, 30.0, s).indices
        for t in range(4):
            assert 50 * t <= idx[t, 0] and idx[t, -1] < 50 * (t + 1)


def test_short_video_repeats_the_last_frame() -> None:
    g = SegmentGrid(T=3, N=4, mode="test").sample(2, 10.0)
    assert g.indices.tolist() == [[0, 1, 1, 1]] * 3
    assert np.isclose(g.end[-1], 0.2)


def test_single_frame_video() -> None:
    g = SegmentGrid(T=7, N=5, mode="train", pairs=True).sample(1, 30.0, 0)
    assert (g.indices == 0).all() and g.indices.shape == (7, 6)


@pytest.mark.parametrize(
    "kwargs,msg", [({"T": 0, "N": 3}, "--segments"), ({"T": 3, "N": 0}, "--frames")]
)
def test_invalid_grid_names_the_option(kwargs: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        SegmentGrid(**kwargs)


def test_no_frames_or_no_fps_is_an_error() -> None:
    with pytest.raises(ConfigError):
        SegmentGrid(3, 3).sample(0, 25.0)
    with pytest.raises(ConfigError, match="fps"):
        SegmentGrid(3, 3).sample(10, 0.0)
