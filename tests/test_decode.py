from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import moving_frames, tone
from vidfeat.decode import probe, read_audio, read_frames
from vidfeat.errors import (
    DecodeError,
    EmptyFileError,
    MissingFileError,
    NotAFileError,
    NotAVideoError,
    TruncatedVideoError,
)
from vidfeat.grid import SegmentGrid
from vidfeat.synth import write_mp4


def sequential_decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def test_probe_reports_stream_properties(bframe_video) -> None:
    path, frames = bframe_video
    info = probe(path)
    assert info.num_frames == 120 and info.frame_count_exact
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(4.8)
    assert (info.width, info.height) == (80, 64)
    assert info.has_audio and info.audio_rate == 44100 and info.audio_channels == 1
    assert info.video_codec == "h264" and info.audio_codec == "aac"


def test_probe_without_audio_is_normal(silent_video: Path) -> None:
    info = probe(silent_video)
    assert not info.has_audio and info.audio_rate is None
    assert read_audio(silent_video) is None


def test_sparse_decode_equals_sequential_decode_with_bframes(bframe_video) -> None:
    path, _ = bframe_video
    full = sequential_decode(path)
    assert len(full) == 120
    # segment gap (24 frames) is smaller than the GOP (40): runs share GOPs and need seeks
    grid = SegmentGrid(T=5, N=3, mode="test").sample(120, 25.0)
    stats: dict = {}
    got = read_frames(path, grid.indices.reshape(-1), stats=stats)
    assert got.shape == (15, 64, 80, 3)
    assert np.array_equal(got, full[grid.indices.reshape(-1)])
    # random orders, repeats, single frames deep inside a GOP
    rng = np.random.default_rng(1)
    for _ in range(5):
        idx = rng.integers(0, 120, size=7)
        assert np.array_equal(read_frames(path, idx), full[idx])
    assert np.array_equal(read_frames(path, [119, 0, 119]), full[[119, 0, 119]])


def test_sparse_decode_does_not_decode_the_whole_file(media_dir: Path) -> None:
    frames = moving_frames(400, h=32, w=48, seed=5)
    path = media_dir / "long.mp4"
    write_mp4(path, frames, 25, None, gop=25, bframes=2)
    stats: dict = {}
    got = read_frames(path, [300, 301, 302], stats=stats)
    assert np.array_equal(got, sequential_decode(path)[300:303])
    assert stats["seeks"] == 1
    assert stats["decoded"] < 40, stats  # one GOP (25) plus decoder delay, not 303 frames


def test_resize_on_decode(bframe_video) -> None:
    path, _ = bframe_video
    full = sequential_decode(path)[[10, 50]]
    small = read_frames(path, [10, 50], short_side=32)
    assert small.shape == (2, 32, 40, 3)
    exact = read_frames(path, [10, 50], size=(20, 16))
    assert exact.shape == (2, 16, 20, 3)

    # same picture as resizing the full frame (other filters: compare 8x8 block means)
    def blocks(x: np.ndarray) -> np.ndarray:
        return cv2.resize(x, (5, 4), interpolation=cv2.INTER_AREA).astype(int)

    for a, b in zip(small, full, strict=True):
        assert np.abs(blocks(a) - blocks(b)).mean() < 6
    gray = read_frames(path, [10], short_side=32, gray=True)
    assert gray.shape == (1, 32, 40) and gray.dtype == np.uint8


def test_audio_is_mono_float_at_the_requested_rate(media_dir: Path) -> None:
    path = media_dir / "stereo.mp4"
    write_mp4(
        path,
        moving_frames(50),
        25,
        tone(2.0, 44100, 1000.0, channels=2),
        44100,
        audio_layout="stereo",
    )
    y = read_audio(path, rate=16000)
    assert y is not None and y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 32000) < 2048  # the codec's priming/padding, not a different rate
    seg = y[4000:20000]
    peak_hz = np.argmax(np.abs(np.fft.rfft(seg))) * 16000 / len(seg)
    assert abs(peak_hz - 1000.0) < 5


@pytest.mark.parametrize(
    "name,err",
    [
        ("zero", EmptyFileError),
        ("text", NotAVideoError),
        ("random", NotAVideoError),
        ("head", NotAVideoError),
        ("dir", NotAFileError),
        ("missing", MissingFileError),
    ],
)
def test_broken_inputs_raise_one_clear_error(broken_files: dict, name: str, err: type) -> None:
    path = broken_files[name]
    with pytest.raises(err) as info:
        probe(path)
    assert str(path) in str(info.value)
    with pytest.raises(err):
        read_frames(path, [0])


def test_truncated_file_is_a_decode_error(broken_files: dict) -> None:
    # moov at the end: half a file has no index at all
    with pytest.raises(DecodeError) as info:
        probe(broken_files["truncated"])
    assert "truncated.mp4" in str(info.value)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_faststart_file_is_refused_not_shortened(media_dir: Path, fraction) -> None:
    src = media_dir / "faststart.mp4"
    if not src.exists():
        write_mp4(src, moving_frames(100), 25, None, gop=25, faststart=True)
    cut = media_dir / f"cut{int(fraction * 100)}.mp4"
    data = src.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(TruncatedVideoError, match="header declares 100 frames"):
        probe(cut)
    with pytest.raises(TruncatedVideoError):
        read_frames(cut, [0, 1])


def test_frame_index_past_the_end_is_an_error(bframe_video) -> None:
    with pytest.raises(DecodeError, match="holds 120 frames"):
        read_frames(bframe_video[0], [120])
