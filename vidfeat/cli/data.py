"""``vidfeat data``: the built-in synthetic dataset (``synth``) and probing a video list
(``probe``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vidfeat.cli.base import Group
from vidfeat.cli.options import VIDEO_ROOT, progress_enabled, video_root_applies


@click.group(cls=Group)
def data() -> None:
    """Datasets: the built-in synthetic dataset, probing video lists."""


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", default=12, show_default=True, help="Number of classes (4-24).")
@click.option("--per-class", default=24, show_default=True, help="Videos per class.")
@click.option("--seconds", default=3.0, show_default=True, help="Clip length in seconds.")
@click.option("--fps", default=15, show_default=True, help="Frame rate.")
@click.option("--size", default=112, show_default=True, help="Frame width = height in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option("--val-fraction", default=0.25, show_default=True, help="Share of each class in val.")
@click.option(
    "--test-fraction",
    default=0.0,
    show_default=True,
    help="Share of each class in a test split (test.csv): select on val, report on test.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def data_synth(
    out: Path,
    classes: int,
    per_class: int,
    seconds: float,
    fps: int,
    size: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    quiet: bool,
) -> None:
    """Write the synthetic action dataset (H.264 + AAC MP4s, train/val lists) to OUT."""
    from vidfeat.synth import SynthConfig, generate

    cfg = SynthConfig(
        classes=classes,
        per_class=per_class,
        seconds=seconds,
        fps=fps,
        size=size,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    rep = generate(out, cfg, progress=progress_enabled(quiet))
    click.echo(
        f"synth: {rep.videos} videos ({rep.train} train, {rep.val} val, "
        + (f"{rep.test} test, " if rep.test else "")
        + f"{rep.without_audio} without audio) in {rep.seconds:.1f}s -> {out} "
        f"(see {out / 'README.txt'})"
    )


@data.command("probe")
@click.argument("video_list", type=click.Path(dir_okay=False, path_type=Path))
@VIDEO_ROOT
@click.option("--quiet", is_flag=True, help="Only the summary and the unreadable files.")
def data_probe(video_list: Path, video_root: Path | None, quiet: bool) -> None:
    """Print id, duration, fps, frames, size and audio of every video of a list.

    Exits non-zero if any file is unreadable.
    """
    from vidfeat.probe import probe_list

    video_root_applies(video_root, video_list)
    rep = probe_list(video_list, video_root=video_root, echo=click.echo, quiet=quiet)
    click.echo(rep.summary())
    if rep.failed:
        sys.exit(1)
