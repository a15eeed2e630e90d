"""Decoding with PyAV: probe, frames at given indices (sparse seeking), audio as mono float.

Frame indices are ranks in presentation order. They are read off the container by a demux-only
pass (packets, no decoding), which is cheap next to decoding and makes indices exact even when
the header lies about frame count or rate, or the stream has B-frames or a variable rate.

``read_frames`` then decodes only what is asked: for each wanted run of frames it seeks to the
keyframe before the run when that skips work, else keeps decoding forward, so a few segments of a
long video cost a few GOPs, not the whole file. Frames are resized by FFmpeg's scaler as they are
converted (``short_side`` or ``size``), so full-size frame stacks of a 1080p video never exist.

Every failure is a :class:`~vidfeat.errors.DecodeError` subclass carrying the path and a one-line
cause; nothing here retries in a loop.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from vidfeat.errors import (
    CorruptVideoError,
    DecodeError,
    EmptyFileError,
    MissingFileError,
    NotAFileError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnsupportedCodecError,
)

# Decoding never sees more than this many frames behind a keyframe; it bounds a pathological file
# (a header claiming hours, a stream with one keyframe) to a clear error instead of a hang.
MAX_FRAMES = 10_000_000


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

    def to_dict(self) -> dict:
        return asdict(self)


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


def _frame_table(
    container: av.container.InputContainer, stream: av.VideoStream, path
) -> _FrameTable | None:
    """Demux (no decode) the video stream. None if the stream has no usable timestamps."""
    pts: list[int] = []
    key_pts: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at EOF
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
            if len(pts) > MAX_FRAMES:
                raise CorruptVideoError(path, f"more than {MAX_FRAMES} frames")
    except av.error.FFmpegError as exc:
        if not pts:
            raise CorruptVideoError(path, _short(exc)) from None
        raise TruncatedVideoError(path, _short(exc)) from None
    if len(set(pts)) != len(pts):
        return None  # duplicate timestamps: ranks would be ambiguous
    pts.sort()
    rank_of = {p: i for i, p in enumerate(pts)}
    key_ranks = sorted(rank_of[p] for p in key_pts)
    return _FrameTable(pts=pts, key_ranks=key_ranks, rank_of=rank_of)


def _check_complete(stream: av.VideoStream, table: _FrameTable, path: str | Path) -> None:
    """A file holding fewer frames than its header declares was cut short: refuse it rather
    than quietly yield fewer frames (and so fewer or shifted features)."""
    declared = int(stream.frames or 0)
    if declared and len(table.pts) < declared - 1:
        raise TruncatedVideoError(
            path, f"header declares {declared} frames, file holds {len(table.pts)}"
        )


def _fps(stream: av.VideoStream, table: _FrameTable | None) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate and float(rate) > 0 and float(rate) < 1000:
        return float(rate)
    if table is not None and len(table.pts) > 1 and stream.time_base:
        span = (table.pts[-1] - table.pts[0]) * stream.time_base
        if span > 0:
            return float((len(table.pts) - 1) / span)
    return 0.0


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
        table = None
        exact = False
        if count_frames:
            table = _frame_table(container, stream, path)
        fps = _fps(stream, table)
        if fps <= 0:
            raise CorruptVideoError(path, "no usable frame rate in the header or timestamps")
        if table is not None:
            num_frames, exact = len(table.pts), True
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
        if table is not None:
            _check_complete(stream, table, path)
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
) -> np.ndarray:
    """Decode the frames at ``indices`` (presentation order, any order, repeats allowed).

    Returns uint8 ``(len(indices), H, W, 3)`` RGB, or ``(len(indices), H, W)`` with ``gray``.
    Pixels equal those of a full sequential decode (seeks land on keyframes; frames are matched
    by timestamp). ``threads`` is FFmpeg's decoder thread count (workers keep 1).
    ``stats``, if given, receives ``decoded`` (frames decoded) and ``seeks`` counts.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("read_frames needs at least one index")
    if idx.min() < 0:
        raise ValueError(f"frame indices must be >= 0 (got {int(idx.min())})")
    wanted = sorted(set(idx.tolist()))
    with open_container(path) as container:
        stream = _video_stream(container, path)
        cc = stream.codec_context
        if threads > 1:
            cc.thread_type = "AUTO"
            cc.thread_count = threads
        out_w, out_h = output_size(int(cc.width), int(cc.height), short_side=short_side, size=size)
        fmt = "gray" if gray else "rgb24"

        counts = stats if stats is not None else {}
        counts.update(decoded=0, seeks=0)

        def convert(frame: av.VideoFrame) -> np.ndarray:
            return frame.to_ndarray(format=fmt, width=out_w, height=out_h, interpolation="BILINEAR")

        table = _frame_table(container, stream, path)
        if table is None:
            got = _decode_sequential(container, stream, path, wanted, convert, counts)
        else:
            _check_complete(stream, table, path)
            if wanted[-1] >= len(table.pts):
                raise CorruptVideoError(
                    path, f"frame {wanted[-1]} asked, the file holds {len(table.pts)} frames"
                )
            got = _decode_sparse(container, stream, path, table, wanted, convert, counts)
    first = got[wanted[0]]
    out = np.empty((idx.size, *first.shape), dtype=np.uint8)
    for i, j in enumerate(idx.tolist()):
        out[i] = got[j]
    return out


def _decode_sequential(
    container, stream, path, wanted: list[int], convert, counts: dict
) -> dict[int, np.ndarray]:
    """Fallback for streams without timestamps: count decoded frames from the start."""
    container.seek(0)
    got: dict[int, np.ndarray] = {}
    need = set(wanted)
    last = wanted[-1]
    try:
        for rank, frame in enumerate(container.decode(stream)):
            counts["decoded"] += 1
            if rank in need:
                got[rank] = convert(frame)
            if rank >= last:
                break
    except av.error.FFmpegError as exc:
        raise CorruptVideoError(path, _short(exc)) from None
    if len(got) != len(need):
        raise TruncatedVideoError(path, f"frame {max(need - set(got))} could not be decoded")
    return got


def _decode_sparse(
    container, stream, path, table: _FrameTable, wanted: list[int], convert, counts: dict
) -> dict[int, np.ndarray]:
    need = frozenset(wanted)
    got: dict[int, np.ndarray] = {}
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
            frames, floor, pos = _seek(container, stream, path, table, key), key, key - 1
            counts["seeks"] += 1
        restarted = False
        try:
            while pos < w:
                frame = next(frames)
                counts["decoded"] += 1
                rank = table.rank_of.get(frame.pts) if frame.pts is not None else None
                if rank is None:
                    continue
                if rank > w and pos < floor:
                    # the seek landed past the keyframe asked for: decode from the start once
                    if restarted or floor == 0:
                        raise CorruptVideoError(path, f"cannot seek to frame {w}")
                    frames, floor, pos, restarted = (
                        _seek(container, stream, path, table, 0),
                        0,
                        -1,
                        True,
                    )
                    continue
                pos = max(pos, rank)
                if rank >= floor and rank in need and rank not in got:
                    got[rank] = convert(frame)
        except StopIteration:
            raise TruncatedVideoError(path, f"frame {w} could not be decoded") from None
        except av.error.FFmpegError as exc:
            raise CorruptVideoError(path, _short(exc)) from None
        if w not in got:
            raise CorruptVideoError(path, f"frame {w} was not produced by the decoder")
    return got


def _seek(container, stream, path, table: _FrameTable, key_rank: int):
    try:
        container.seek(table.pts[key_rank], stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError as exc:
        raise CorruptVideoError(path, f"seek failed: {_short(exc)}") from None
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


def fingerprint(path: str | Path) -> dict:
    """Source fingerprint stored with features: size + mtime (cheap; detects replaced files)."""
    st = check_file(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


__all__ = [
    "DecodeError",
    "VideoInfo",
    "check_file",
    "fingerprint",
    "iter_audio",
    "open_container",
    "output_size",
    "probe",
    "read_audio",
    "read_frames",
]
