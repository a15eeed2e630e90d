from __future__ import annotations

import struct
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import moving_frames, tone
from vidfeat.decode import probe, read_audio, read_frames
from vidfeat.errors import (
    CorruptVideoError,
    DecodeError,
    EmptyFileError,
    MissingFileError,
    NoFrameRateError,
    NotAFileError,
    NotAVideoError,
    TooFewFramesError,
    TruncatedVideoError,
    UnsupportedCodecError,
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


def test_resized_frames_are_ffmpegs_scaler_pixels_for_pixel(bframe_video) -> None:
    """Decoding reuses one FFmpeg scaler for all frames of a call: the pixels are exactly what
    PyAV's per-frame conversion gives (gray and RGB, resized)."""
    import av

    path, _ = bframe_video
    want = {3: None, 47: None, 118: None}
    with av.open(str(path)) as c:
        for k, frame in enumerate(c.decode(video=0)):
            if k in want:
                want[k] = frame
                if k == 118:
                    for fmt, gray in (("gray", True), ("rgb24", False)):
                        got = read_frames(path, list(want), short_side=36, gray=gray)
                        for g, f in zip(got, want.values(), strict=True):
                            ref = f.to_ndarray(
                                format=fmt, width=44, height=36, interpolation="BILINEAR"
                            )  # 80x64 to short side 36: width rounded to even
                            assert np.array_equal(g, ref), fmt
                    break


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


# --------------------------------------------------------------------------- other containers


def write_container(path: Path, frames: np.ndarray, fmt: str, codec: str, options: dict) -> None:
    """Encode ``frames`` at 25 fps into container ``fmt`` (single-threaded: reproducible)."""
    from fractions import Fraction

    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream(codec, rate=25, options=options)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vs.codec_context.thread_type = "NONE"
        vs.codec_context.thread_count = 1
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)


X264 = {"crf": "12", "preset": "veryfast", "bf": "3", "g": "40", "sc_threshold": "0"}
VP9 = {"g": "40", "crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}


def _encoder_available(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - any failure means "cannot encode here"
        return False
    return True


@pytest.mark.parametrize(
    "suffix,fmt,codec,options,seeks",
    [
        # MPEG-TS seeks by byte position and lands past the keyframe: sequential fallback
        (".ts", "mpegts", "libx264", X264, False),
        (".mkv", "matroska", "libx264", X264, True),
        (".webm", "webm", "libvpx-vp9", VP9, True),
    ],
)
def test_sparse_decode_equals_sequential_in_other_containers(
    media_dir: Path, suffix: str, fmt: str, codec: str, options: dict, seeks: bool
) -> None:
    if not _encoder_available(codec):
        pytest.skip(f"this FFmpeg build cannot encode {codec}")
    path = media_dir / f"containers{suffix}"
    write_container(path, moving_frames(120), fmt, codec, options)
    full = sequential_decode(path)
    assert len(full) == 120
    info = probe(path)
    assert info.num_frames == 120 and info.fps == pytest.approx(25.0)
    grid = SegmentGrid(T=5, N=3, mode="test").sample(120, 25.0)
    stats: dict = {}
    got = read_frames(path, grid.indices.reshape(-1), stats=stats)
    assert np.array_equal(got, full[grid.indices.reshape(-1)])
    assert stats["sequential"] == (0 if seeks else 1), stats
    rng = np.random.default_rng(2)
    for _ in range(3):
        idx = rng.integers(0, 120, size=7)
        assert np.array_equal(read_frames(path, idx), full[idx])
    assert np.array_equal(read_frames(path, [119, 0, 119]), full[[119, 0, 119]])


def test_raw_h264_stream_without_timestamps_works(media_dir: Path) -> None:
    path = media_dir / "raw.h264"
    write_container(path, moving_frames(60), "h264", "libx264", X264)
    full = sequential_decode(path)
    info = probe(path)  # counted from the parser's packets: no container index, no timestamps
    assert info.num_frames == len(full) == 60 and info.frame_count_exact
    assert info.fps == pytest.approx(25.0)
    stats: dict = {}
    idx = np.array([40, 3, 59, 3])
    assert np.array_equal(read_frames(path, idx, stats=stats), full[idx])
    assert stats["sequential"] == 1 and stats["decoded"] == 60
    with pytest.raises(DecodeError, match="holds 60 frames"):
        read_frames(path, [60])


# --------------------------------------------------------------------------- broken headers


_MP4_PARENTS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int]]:
    """Every box of an MP4, recursing into the containers we patch: (type, payload offset)."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos + 8 <= end:
        size, typ = struct.unpack(">I4s", data[pos : pos + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        out.append((typ, pos + head))
        if typ in _MP4_PARENTS:
            out += mp4_boxes(data, pos + head, pos + size)
        pos += size
    return out


def patch_mp4(
    data: bytes,
    *,
    timescale: int | None = None,
    duration: int | None = None,
    stts_delta: int | None = None,
) -> bytes:
    """Rewrite header fields in place: the media (mdhd) timescale; the durations claimed by
    mvhd, tkhd, mdhd and the edit list; every stts sample delta."""
    out = bytearray(data)

    def put(off: int, value: int, wide: bool) -> None:
        out[off : off + (8 if wide else 4)] = struct.pack(">Q" if wide else ">I", value)

    for typ, off in mp4_boxes(data):
        v1 = out[off] == 1
        body = off + 4  # after version + flags
        if typ == b"mdhd" and timescale is not None:
            put(body + (16 if v1 else 8), timescale, False)
        if typ in (b"mvhd", b"mdhd") and duration is not None:
            put(body + (20 if v1 else 12), duration, v1)
        if typ == b"tkhd" and duration is not None:
            put(body + (24 if v1 else 16), duration, v1)
        if typ == b"elst" and duration is not None:
            n = struct.unpack(">I", out[body : body + 4])[0]
            for i in range(n):
                put(body + 4 + i * (20 if v1 else 12), duration, v1)
        if typ == b"stts" and stts_delta is not None:
            n = struct.unpack(">I", out[body : body + 4])[0]
            for i in range(n):
                put(body + 8 + 8 * i, stts_delta, False)
    return bytes(out)


@pytest.fixture(scope="module")
def ten_frames(media_dir: Path) -> Path:
    path = media_dir / "ten.mp4"
    write_mp4(path, moving_frames(10, 32, 32), 10, None)
    return path


def test_zero_timescale_is_a_frame_rate_error_not_truncation(ten_frames: Path, tmp_path) -> None:
    bad = tmp_path / "zero_timescale.mp4"
    bad.write_bytes(patch_mp4(ten_frames.read_bytes(), timescale=0))
    with pytest.raises(NoFrameRateError, match="no usable frame rate") as ei:
        probe(bad)
    assert "timescale is 0" in str(ei.value) and "truncated" not in str(ei.value)


def test_zero_frame_durations_fail_on_the_timestamps(ten_frames: Path, tmp_path) -> None:
    bad = tmp_path / "zero_stts.mp4"
    bad.write_bytes(patch_mp4(ten_frames.read_bytes(), stts_delta=0))
    # every frame claims one time: no frame rate can be trusted
    with pytest.raises(NoFrameRateError, match="10 frames share 3 presentation time"):
        probe(bad)
    # and with B-frames FFmpeg drops some: a clear cause, not "truncated"
    with pytest.raises(CorruptVideoError, match="duplicate timestamps") as ei:
        read_frames(bad, range(10))
    assert not isinstance(ei.value, TruncatedVideoError)


def test_an_absurd_duration_claim_changes_nothing(ten_frames: Path, tmp_path) -> None:
    liar = tmp_path / "long_claim.mp4"
    liar.write_bytes(patch_mp4(ten_frames.read_bytes(), duration=0xFFFFFFF0))
    info = probe(liar)  # frames are counted from packets, never from the claimed duration
    assert info.num_frames == 10 and info.duration == pytest.approx(1.0)
    assert np.array_equal(read_frames(liar, range(10)), sequential_decode(ten_frames))


# --------------------------------------------------------------------------- flow extractor


def test_flow_extractor_computes_each_distinct_pair_once(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vidfeat.extract.fields import FlowFieldsExtractor
    from vidfeat.flow import flow_on_grid, make_method, quantize
    from vidfeat.videolist import VideoRecord

    path = media_dir / "short45.mp4"
    write_mp4(path, moving_frames(45, 32, 32, seed=3), 25, None)
    method = make_method("farneback")
    ex = FlowFieldsExtractor(method, segments=25, frames=5, short_side=16, bound=20.0)
    grid = ex.grid.sample(45, 25.0)
    pairs = {(int(r[j]), int(r[j + 1])) for r in grid.indices for j in range(5)}
    assert len(pairs) == 44 and grid.indices.size // 6 * 5 == 125  # 125 grid pairs, 44 distinct
    calls = []
    calc = type(method).calc

    def counting(self, prev, nxt, out=None):
        calls.append(1)
        return calc(self, prev, nxt, out)

    monkeypatch.setattr(type(method), "calc", counting)
    got = ex.extract(VideoRecord(video_id="v", path=path, label=None), None)
    assert len(calls) == 44
    monkeypatch.setattr(type(method), "calc", calc)
    gray = read_frames(path, grid.indices.reshape(-1), short_side=16, gray=True)
    every_pair = flow_on_grid(gray.reshape(25, 6, *gray.shape[1:]), method)
    assert np.array_equal(got.features, quantize(every_pair, 20.0))  # copies equal recomputes


def test_flow_extractor_refuses_a_one_frame_video(media_dir: Path) -> None:
    from vidfeat.extract.fields import FlowFieldsExtractor
    from vidfeat.flow import make_method
    from vidfeat.videolist import VideoRecord

    path = media_dir / "one_frame.mp4"
    write_mp4(path, moving_frames(1, 32, 32), 10, None)
    ex = FlowFieldsExtractor(
        make_method("farneback"), segments=2, frames=1, short_side=16, bound=20
    )
    with pytest.raises(TooFewFramesError, match="needs at least 2 frames for optical flow"):
        ex.extract(VideoRecord(video_id="one", path=path, label=None), None)


def test_unsupported_codec_is_named(media_dir: Path, tmp_path: Path) -> None:
    # an MKV whose codec id FFmpeg does not know (H.264's id patched, same length)
    src = tmp_path / "ok.mkv"
    write_container(src, moving_frames(10), "matroska", "libx264", X264)
    data = src.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    bad = tmp_path / "unknown.mkv"
    bad.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_ZZZZZ/ISO/AVC"))
    for call in (lambda: probe(bad), lambda: read_frames(bad, [0])):
        with pytest.raises(UnsupportedCodecError, match="unknown.mkv: codec not supported"):
            call()


def test_probe_without_counting_estimates_from_the_header(bframe_video) -> None:
    exact, fast = probe(bframe_video[0]), probe(bframe_video[0], count_frames=False)
    assert exact.frame_count_exact and exact.num_frames == 120
    assert not fast.frame_count_exact and abs(fast.num_frames - 120) <= 1
    assert fast.fps == pytest.approx(25.0) and fast.has_audio
