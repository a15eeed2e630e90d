"""``vidfeat data probe``: a table of what every video of a list holds, unreadable files flagged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vidfeat.decode import probe
from vidfeat.errors import DecodeError
from vidfeat.report import Report
from vidfeat.videolist import load_list


def probe_list(
    list_path: str | Path,
    *,
    video_root: str | Path | None = None,
    echo: Callable[[str], None] = print,
    quiet: bool = False,
) -> Report:
    """Probe every video of a list, printing one row each; unreadable files are counted as
    failures with their cause, and a Kinetics list's missing files are reported."""
    vl = load_list(list_path, video_root=video_root)
    rep = Report("probe")
    for line, path in vl.missing:
        rep.note("missing files (Kinetics rows without a video)")
        if not quiet:
            echo(f"missing  line {line}: {path}")
    width = max(len(r.video_id) for r in vl.records)
    if not quiet:
        echo(f"{'id':{width}s}  {'seconds':>8s}  {'fps':>6s}  {'frames':>7s}  {'size':>9s}  audio")
    for r in vl.records:
        try:
            info = probe(r.path)
        except DecodeError as exc:
            rep.fail(r.video_id, str(exc))
            echo(f"{r.video_id:{width}s}  UNREADABLE: {exc}")
            continue
        rep.done += 1
        if not info.has_audio:
            rep.note("without audio")
        if quiet:
            continue
        audio = (
            f"{info.audio_codec} {info.audio_rate} Hz x{info.audio_channels}"
            if info.has_audio
            else "-"
        )
        frames = f"{info.num_frames}" + ("" if info.frame_count_exact else "~")
        echo(
            f"{r.video_id:{width}s}  {info.duration:8.2f}  {info.fps:6.2f}  {frames:>7s}  "
            f"{info.width:>4d}x{info.height:<4d}  {audio}"
        )
    return rep.finish()
