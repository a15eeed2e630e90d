"""Decoding with PyAV: probe, frames at given indices (sparse seeking), audio as mono float.

Frame indices are ranks in presentation order. They are read off the container by a demux-only
pass (packets, no decoding), which is cheap next to decoding and makes indices exact even when
the header lies about frame count or rate, or the stream has B-frames or a variable rate.

``read_frames`` then decodes only what is asked: for each wanted run of frames it seeks to the
keyframe before the run when that skips work, else keeps decoding forward, so a few segments of a
long video cost a few GOPs, not the whole file. Where a seek does not deliver the frames asked
for (MPEG-TS seeks by byte position), or the packets carry no usable timestamps (a raw ``.h264``
stream), it decodes the file sequentially from the start instead: slower, never wrong. Frames are
resized by FFmpeg's scaler as they are converted (``short_side`` or ``size``), so full-size frame
stacks of a 1080p video never exist.

Every failure is a :class:`~vidfeat.errors.DecodeError` subclass carrying the path and a one-line
cause; nothing here retries in a loop.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vidfeat.errors import (
    CorruptVideoError,
    DecodeError,
    EmptyFileError,
    MissingFileError,
    NoFrameRateError,
    NotAFileError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnsupportedCodecError,
)

# Decoding never sees more than this many frames behind a keyframe; it bounds a pathological file
# (a header claiming hours, a stream with one keyframe) to a clear error instead of a hang.
MAX_FRAMES = 10_000_000
# Plausible frame rates. Below one frame a minute the rate comes from a broken header (a
# timescale of 0 or 1 makes FFmpeg report e.g. 1/1024 fps), and the segment times built on it
# would be nonsense; above 1000 fps it is a timestamp glitch.
MIN_FPS = 1 / 60
MAX_FPS = 1000.0


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a file. Times in seconds."""

    path: str
    num_frames: int  # counted from the stream's packets (exact), or estimated (see flag)
    frame_count_exact: bool
    fps: float
    duration: float  # num_frames / fps: the duration of the frames actually present
    width: int
    height: int
    video_codec: str
    has_audio: bool
    audio_rate: int | None
    audio_channels: int | None
    audio_codec: str | None
    header_frames: int | None  # what the container claims (None if it does not say)
    size_bytes: int
    mtime_ns: int


def check_file(path: str | Path) -> os.stat_result:
    """Raise the right DecodeError for a missing, non-regular or empty path; else its stat."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MissingFileError(p) from None
    except OSError as exc:  # e.g. a symlink loop, permission denied
        raise NotAFileError(p, exc.strerror or type(exc).__name__) from None
    if not p.is_file():
        raise NotAFileError(p, "a directory" if p.is_dir() else None)
    if st.st_size == 0:
        raise EmptyFileError(p)
    return st


@contextmanager
def open_container(path: str | Path) -> Iterator[av.container.InputContainer]:
    """``av.open`` with FFmpeg's errors mapped to DecodeError subclasses."""
    check_file(path)
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        raise NotAVideoError(path, _short(exc)) from None
    except av.error.FFmpegError as exc:
        raise NotAVideoError(path, _short(exc)) from None
    try:
        yield container
    finally:
        container.close()


def _short(exc: BaseException) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return msg.splitlines()[0][:200] if msg else type(exc).__name__


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    if not container.streams.video:
        raise NoVideoStreamError(path)
    stream = container.streams.video[0]
    if stream.codec_context is None or stream.codec_context.name is None:
        raise UnsupportedCodecError(path)
    return stream


@dataclass
class _FrameTable:
    """Presentation-order pts of every frame, and the ranks of the keyframes."""

    pts: list[int]
    key_ranks: list[int]
    rank_of: dict[int, int]


@dataclass
class _StreamIndex:
    """What a demux-only pass learns: the frame count (one packet per frame) and, when the
    packets carry usable timestamps, the frame table sparse decoding seeks by."""

    count: int
    table: _FrameTable | None
    why_no_table: str | None = None  # e.g. "duplicate timestamps" (for error messages)
    distinct_pts: int = 0  # distinct presentation times (== count when they are usable)


def _stream_index(
    container: av.container.InputContainer, stream: av.VideoStream, path
) -> _StreamIndex:
    """Demux (no decode) the video stream, counting its packets and collecting timestamps.

    Streams without timestamps (a raw ``.h264`` elementary stream) are still counted: their
    demuxer's parser splits the bytes into one packet per frame."""
    pts: list[int] = []
    key_pts: list[int] = []
    count = 0
    stamped = True
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at EOF
                continue
            count += 1
            if count > MAX_FRAMES:
                raise CorruptVideoError(path, f"more than {MAX_FRAMES} frames")
            if packet.pts is None:
                stamped = False
            elif stamped:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
    except av.error.FFmpegError as exc:
        if not count:
            raise CorruptVideoError(path, _short(exc)) from None
        raise TruncatedVideoError(path, _short(exc)) from None
    if not stamped:
        return _StreamIndex(count, None, "no timestamps")
    distinct = len(set(pts))
    if distinct != len(pts):  # ranks would be ambiguous
        return _StreamIndex(count, None, "duplicate timestamps", distinct)
    pts.sort()
    rank_of = {p: i for i, p in enumerate(pts)}
    key_ranks = sorted(rank_of[p] for p in key_pts)
    table = _FrameTable(pts=pts, key_ranks=key_ranks, rank_of=rank_of)
    return _StreamIndex(count, table, None, distinct)


def _check_complete(stream: av.VideoStream, count: int, path: str | Path) -> None:
    """A file holding fewer frames than its header declares was cut short: refuse it rather
    than quietly yield fewer frames (and so fewer or shifted features)."""
    declared = int(stream.frames or 0)
    if declared and count < declared - 1:
        raise TruncatedVideoError(path, f"header declares {declared} frames, file holds {count}")


def _fps(stream: av.VideoStream, table: _FrameTable | None) -> float:
    """Frames per second from the header's rates, else from the timestamps; 0.0 if none is
    plausible (see ``MIN_FPS``, ``MAX_FPS``)."""
    tb = stream.time_base
    if tb is not None and tb >= 1:
        # whole-second timestamps: FFmpeg's stand-in for a zero or missing timescale (an MP4
        # mdhd timescale of 0 becomes 1); rates derived from them are meaningless
        return 0.0
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and MIN_FPS <= float(rate) < MAX_FPS:
            return float(rate)
    if table is not None and len(table.pts) > 1 and tb:
        span = (table.pts[-1] - table.pts[0]) * tb
        if span > 0 and MIN_FPS <= (len(table.pts) - 1) / span < MAX_FPS:
            return float((len(table.pts) - 1) / span)
    return 0.0


def _rate_problem(stream: av.VideoStream) -> str:
    """Why :func:`_fps` found nothing, for the error message."""
    tb = stream.time_base
    if tb is not None and tb >= 1:
        return f"time base {tb} s: the header's timescale is 0 or missing"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate:
        return (
            f"the header says {float(rate):.4g} fps, outside {MIN_FPS:.3g}-{MAX_FPS:g}, and the "
            "timestamps give none either"
        )
    return "the header states no rate and the timestamps give none"


def probe(path: str | Path, *, count_frames: bool = True) -> VideoInfo:
    """Duration, fps, frame count, size and audio properties of a media file.

    With ``count_frames`` (default) the frame count is exact: the stream's packets are counted
    (no decoding). Without it, the container's claim is used, or ``duration × fps`` estimated when
    the container does not say (``frame_count_exact=False``).
    Raises a DecodeError subclass for missing, empty, unreadable, truncated or video-less files.
    """
    st = check_file(path)
    with open_container(path) as container:
        stream = _video_stream(container, path)
        header_frames = int(stream.frames) if stream.frames else None
        audio = container.streams.audio[0] if container.streams.audio else None
        index = _stream_index(container, stream, path) if count_frames else None
        if index is not None and index.why_no_table == "duplicate timestamps":
            # a container that stamps frames but gives several the same time has a broken
            # timing table (e.g. MP4 stts deltas of 0): any rate derived from it is invented
            raise NoFrameRateError(
                path,
                f"its timing table is broken: {index.count} frames share {index.distinct_pts} "
                "presentation time(s)",
            )
        fps = _fps(stream, index.table if index is not None else None)
        if fps <= 0:
            raise NoFrameRateError(path, _rate_problem(stream))
        exact = False
        if index is not None:
            num_frames, exact = index.count, True
        elif header_frames:
            num_frames = header_frames
        else:
            dur = None
            if stream.duration is not None and stream.time_base:
                dur = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                dur = container.duration / av.time_base
            num_frames = int(round(dur * fps)) if dur else 0
        if num_frames <= 0:
            raise CorruptVideoError(path, "the video stream holds no frames")
        if index is not None:
            _check_complete(stream, index.count, path)
        cc = stream.codec_context
        return VideoInfo(
            path=str(path),
            num_frames=num_frames,
            frame_count_exact=exact,
            fps=fps,
            duration=num_frames / fps,
            width=int(cc.width),
            height=int(cc.height),
            video_codec=cc.name,
            has_audio=audio is not None,
            audio_rate=int(audio.codec_context.sample_rate) if audio is not None else None,
            audio_channels=int(audio.codec_context.channels) if audio is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            header_frames=header_frames,
            size_bytes=int(st.st_size),
            mtime_ns=int(st.st_mtime_ns),
        )


def frame_times(path: str | Path) -> np.ndarray | None:
    """Each frame's presentation time in seconds from the first, in presentation order, read
    by a demux-only pass; None when the stream carries no usable timestamps (then frame j is at
    ``j / fps``)."""
    with open_container(path) as container:
        stream = _video_stream(container, path)
        index = _stream_index(container, stream, path)
        if index.table is None or not stream.time_base:
            return None
        pts = np.asarray(index.table.pts, dtype=np.float64)
        return (pts - pts[0]) * float(stream.time_base)


def output_size(
    width: int, height: int, *, short_side: int | None = None, size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(width, height) after resizing: ``size`` exactly, or the short side to ``short_side``
    keeping the aspect ratio (even dimensions), or unchanged."""
    if size is not None:
        w, h = size
        if w < 1 or h < 1:
            raise ValueError(f"size must be positive, got {size}")
        return int(w), int(h)
    if short_side is not None:
        if short_side < 1:
            raise ValueError(f"short_side must be positive, got {short_side}")
        scale = short_side / min(width, height)
        w = max(2, int(round(width * scale / 2)) * 2)
        h = max(2, int(round(height * scale / 2)) * 2)
        if width <= height:
            w = short_side
        else:
            h = short_side
        return w, h
    return int(width), int(height)


def read_frames(
    path: str | Path,
    indices: Sequence[int] | np.ndarray,
    *,
    short_side: int | None = None,
    size: tuple[int, int] | None = None,
    gray: bool = False,
    threads: int = 1,
    stats: dict | None = None,
    on_frame: Callable[[int, np.ndarray], None] | None = None,
    keep: bool = True,
) -> np.ndarray | None:
    """Decode the frames at ``indices`` (presentation order, any order, repeats allowed).

    Returns uint8 ``(len(indices), H, W, 3)`` RGB, or ``(len(indices), H, W)`` with ``gray``.
    Pixels equal those of a full sequential decode (seeks land on keyframes; frames are matched
    by timestamp). Where a seek does not deliver the frames asked for (MPEG-TS seeks by byte
    position and can land past them) or the stream has no usable timestamps, the file is decoded
    sequentially from the start instead. ``threads`` is FFmpeg's decoder thread count (workers
    keep 1). ``stats``, if given, receives ``decoded`` (frames decoded), ``seeks`` and
    ``sequential`` (1 when the sequential decode ran) counts. ``on_frame(index, frame)``, if
    given, is called once per distinct index as soon as its frame is converted (ascending order
    within each pass), so a caller in another thread can start on the first frames while the
    rest decode; an exception it raises stops decoding and propagates. ``keep=False`` (with
    ``on_frame``) keeps no frame: they are only handed to ``on_frame`` (a long video streamed
    in bounded memory), and None is returned.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("read_frames needs at least one index")
    if idx.min() < 0:
        raise ValueError(f"frame indices must be >= 0 (got {int(idx.min())})")
    wanted = sorted(set(idx.tolist()))
    counts = stats if stats is not None else {}
    counts.update(decoded=0, seeks=0, sequential=0)
    with open_container(path) as container:
        stream = _video_stream(container, path)
        cc = stream.codec_context
        out_w, out_h = output_size(int(cc.width), int(cc.height), short_side=short_side, size=size)
        fmt = "gray" if gray else "rgb24"
        # one scaler for the whole call: VideoFrame.to_ndarray(format=, width=) would build a
        # new SwsContext for every frame, which cost ~3 ms a frame at 640x272, more than the
        # H.264 decode itself; the cached context gives identical pixels 12x faster
        scaler = VideoReformatter()

        def convert(frame: av.VideoFrame) -> np.ndarray:
            return scaler.reformat(
                frame, format=fmt, width=out_w, height=out_h, interpolation="BILINEAR"
            ).to_ndarray()

        index = _stream_index(container, stream, path)
        _check_complete(stream, index.count, path)
        if wanted[-1] >= index.count:
            raise CorruptVideoError(
                path, f"frame {wanted[-1]} asked, the file holds {index.count} frames"
            )
        got: dict[int, np.ndarray] = {} if on_frame is None else _Reporting(on_frame, keep)
        if index.table is not None:
            _threads(stream, threads)
            try:
                _decode_sparse(container, stream, path, index.table, wanted, convert, counts, got)
            except _SeekMiss:
                pass
    if len(got) < len(wanted):
        _decode_sequential(path, index, wanted, convert, counts, got, threads)
    if on_frame is not None and not keep:
        return None
    first = got[wanted[0]]
    out = np.empty((idx.size, *first.shape), dtype=np.uint8)
    for i, j in enumerate(idx.tolist()):
        out[i] = got[j]
    return out


def _threads(stream: av.VideoStream, threads: int) -> None:
    if threads > 1:
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = threads


Convert = Callable[[av.VideoFrame], np.ndarray]


class _Reporting(dict):
    """The decoded-frames dict of :func:`read_frames` that calls ``on_frame`` per new entry."""

    def __init__(self, on_frame: Callable[[int, np.ndarray], None], keep: bool = True) -> None:
        super().__init__()
        self.on_frame, self.keep = on_frame, keep

    def __setitem__(self, rank: int, frame: np.ndarray) -> None:
        super().__setitem__(rank, frame if self.keep else None)  # type: ignore[assignment]
        self.on_frame(rank, frame)


class _SeekMiss(Exception):
    """A seek did not deliver the frames asked for: decode sequentially instead."""


def _decode_sequential(
    path: str | Path,
    index: _StreamIndex,
    wanted: list[int],
    convert: Convert,
    counts: dict,
    got: dict[int, np.ndarray],
    threads: int,
) -> None:
    """Decode from the start of a freshly opened file (a raw stream cannot seek back), keeping
    the wanted frames not in ``got`` yet. Frames are matched by timestamp when the stream has a
    frame table, else counted in output (= presentation) order."""
    counts["sequential"] = 1
    table = index.table
    need = set(wanted) - set(got)
    produced = 0
    with open_container(path) as container:
        stream = _video_stream(container, path)
        _threads(stream, threads)
        try:
            for frame in container.decode(stream):
                counts["decoded"] += 1
                if table is None:
                    rank: int | None = produced
                else:
                    rank = table.rank_of.get(frame.pts) if frame.pts is not None else None
                produced += 1
                if rank in need:
                    got[rank] = convert(frame)
                    need.discard(rank)
                    if not need:
                        return
        except av.error.FFmpegError as exc:
            raise CorruptVideoError(path, _short(exc)) from None
    why = (
        f"the stream has {index.why_no_table}"
        if index.why_no_table
        else "undecodable data or a broken edit list"
    )
    raise CorruptVideoError(
        path,
        f"the decoder produced {produced} of the stream's {index.count} frames, frame "
        f"{min(need)} missing: {why}",
    )


def _decode_sparse(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    path: str | Path,
    table: _FrameTable,
    wanted: list[int],
    convert: Convert,
    counts: dict,
    got: dict[int, np.ndarray],
) -> None:
    """Seek to the keyframe before each run of wanted frames that is not reached by decoding
    on. Raises :class:`_SeekMiss` when a seek does not deliver (the caller then decodes
    sequentially, keeping what was found here)."""
    need = frozenset(wanted)
    frames = None  # the live decode generator
    pos = -1  # rank of the last frame the live generator produced
    floor = 0  # ranks below this (after a seek) may be broken leading frames: never kept
    for w in wanted:
        if w in got:
            continue
        ki = bisect.bisect_right(table.key_ranks, w) - 1
        key = table.key_ranks[ki] if ki >= 0 else 0
        if frames is None or key > pos + 1 or w <= pos:
            # seeking skips the frames between pos and the keyframe before w
            frames, floor, pos = _seek(container, stream, table, key), key, key - 1
            counts["seeks"] += 1
        try:
            while pos < w:
                frame = next(frames)
                counts["decoded"] += 1
                rank = table.rank_of.get(frame.pts) if frame.pts is not None else None
                if rank is None:
                    continue
                if rank > w and pos < floor:
                    raise _SeekMiss  # the seek landed past the keyframe asked for
                pos = max(pos, rank)
                if rank >= floor and rank in need and rank not in got:
                    got[rank] = convert(frame)
        except StopIteration:
            raise _SeekMiss from None
        except av.error.FFmpegError as exc:
            raise CorruptVideoError(path, _short(exc)) from None
        if w not in got:
            raise _SeekMiss  # w came out before the seek's keyframe, or not at all


def _seek(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    table: _FrameTable,
    key_rank: int,
) -> Iterator[av.VideoFrame]:
    try:
        container.seek(table.pts[key_rank], stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        raise _SeekMiss from None
    return iter(container.decode(stream))


def read_audio(path: str | Path, rate: int = 16000) -> np.ndarray | None:
    """The first audio track as mono float32 samples at ``rate`` Hz; None if there is no track.

    Resampled by FFmpeg's resampler (through PyAV: no ffmpeg binary, no WAV); the mono mixdown
    is the mean of the channels.
    Raises a DecodeError if the track exists but cannot be decoded.
    """
    return _concat(iter_audio(path, rate))


def _concat(chunks: Iterator[np.ndarray] | None) -> np.ndarray | None:
    if chunks is None:
        return None
    parts = list(chunks)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def iter_audio(path: str | Path, rate: int = 16000) -> Iterator[np.ndarray] | None:
    """Stream the first audio track as mono float32 chunks at ``rate`` Hz (bounded memory).

    Returns None (not an iterator) when the file has no audio track.
    """
    with open_container(path) as container:
        if not container.streams.audio:
            return None
    # a generator opens the file again when consumed, so the caller controls its lifetime
    return _audio_chunks(path, rate)


def _mono(frame: av.AudioFrame) -> np.ndarray:
    a = frame.to_ndarray()  # planar float: (channels, samples)
    return (a[0] if a.shape[0] == 1 else a.mean(axis=0)).astype(np.float32, copy=False)


def _audio_chunks(path: str | Path, rate: int) -> Iterator[np.ndarray]:
    with open_container(path) as container:
        stream = container.streams.audio[0]
        # Resample every channel, then average them: the mono mixdown VGGish defines (FFmpeg's
        # own stereo->mono downmix weighs each side by 1/sqrt(2), i.e. 3 dB louder).
        resampler = av.AudioResampler(format="fltp", rate=rate)
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler keep its own clock
                for out in resampler.resample(frame):
                    yield _mono(out)
            for out in resampler.resample(None):
                yield _mono(out)
        except av.error.FFmpegError as exc:
            raise CorruptVideoError(path, f"audio: {_short(exc)}") from None


__all__ = [
    "DecodeError",
    "VideoInfo",
    "check_file",
    "iter_audio",
    "open_container",
    "output_size",
    "probe",
    "read_audio",
    "read_frames",
]
