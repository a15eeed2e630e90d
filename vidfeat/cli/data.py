"""``vidfeat data``: the built-in synthetic datasets (``synth``, trimmed clips or, with
``--untrimmed``, long videos with annotated actions) and probing a video list (``probe``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vidfeat.cli.base import Group
from vidfeat.cli.options import (
    VIDEO_ROOT,
    given,
    not_applicable,
    on_command_line,
    progress_enabled,
    video_root_applies,
)

# options of one kind of dataset only, and why the other kind has no use for them
TRIMMED_ONLY = {
    "per_class": "an untrimmed video holds several actions of random classes (see --videos)",
    "seconds": "untrimmed videos last --min-seconds to --max-seconds",
    "val_fraction": "untrimmed videos are split into validation and test by --test-fraction",
}
UNTRIMMED_ONLY = ("videos", "min_seconds", "max_seconds")


@click.group(cls=Group)
def data() -> None:
    """Datasets: the built-in synthetic datasets, probing video lists."""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse_foreign(untrimmed: bool) -> None:
    """Refuse (UsageError) the options the chosen kind of dataset would ignore; from their
    environment variables, leave them out with a note (:func:`not_applicable`)."""
    if untrimmed:
        for name, why in TRIMMED_ONLY.items():
            if given(name):
                not_applicable(name, f"applies to trimmed clips: {why}")
    else:
        named = [_option(n) for n in UNTRIMMED_ONLY if on_command_line(n)]
        for n in UNTRIMMED_ONLY:
            if given(n) and not on_command_line(n):
                not_applicable(n, "applies to untrimmed videos (--untrimmed)")
        if named:
            raise click.UsageError(
                f"{', '.join(named)} apply to untrimmed videos: add --untrimmed, or leave "
                f"{'them' if len(named) > 1 else 'it'} out"
            )


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--untrimmed",
    is_flag=True,
    help="Long videos in which the classes' actions occur in known intervals, with an "
    "ActivityNet/THUMOS-style annotations.json, instead of one clip per action.",
)
@click.option("--classes", default=12, show_default=True, help="Number of classes (4-24).")
@click.option("--per-class", default=24, show_default=True, help="Videos per class.")
@click.option("--seconds", default=3.0, show_default=True, help="Clip length in seconds.")
@click.option(
    "--videos", default=8, show_default=True, help="With --untrimmed: the number of videos."
)
@click.option(
    "--min-seconds",
    default=20.0,
    show_default=True,
    help="With --untrimmed: the shortest video length (up to 14400).",
)
@click.option(
    "--max-seconds",
    default=120.0,
    show_default=True,
    help="With --untrimmed: the longest video length (up to 14400).",
)
@click.option("--fps", default=15, show_default=True, help="Frame rate.")
@click.option("--size", default=112, show_default=True, help="Frame width = height in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option("--val-fraction", default=0.25, show_default=True, help="Share of each class in val.")
@click.option(
    "--test-fraction",
    type=float,
    default=None,
    show_default="0; 0.5 with --untrimmed",
    help="Share of each class in a test split (test.csv): select on val, report on test. With "
    "--untrimmed: share of the videos in the test subset (the rest: validation).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def data_synth(
    out: Path,
    untrimmed: bool,
    classes: int,
    per_class: int,
    seconds: float,
    videos: int,
    min_seconds: float,
    max_seconds: float,
    fps: int,
    size: int,
    seed: int,
    val_fraction: float,
    test_fraction: float | None,
    quiet: bool,
) -> None:
    """Write a synthetic action dataset (H.264 + AAC MP4s, lists, README.txt) to OUT.

    Trimmed (default): one clip per action, train/val lists. --untrimmed: long videos with
    several actions each over a neutral background, annotations.json and video lists.
    """
    _refuse_foreign(untrimmed)
    if untrimmed:
        from vidfeat.synth_untrimmed import UntrimmedConfig, generate_untrimmed

        ucfg = UntrimmedConfig(
            classes=classes,
            videos=videos,
            min_seconds=min_seconds,
            max_seconds=max_seconds,
            fps=fps,
            size=size,
            seed=seed,
            **({} if test_fraction is None else {"test_fraction": test_fraction}),
        )
        click.echo(generate_untrimmed(out, ucfg, progress=progress_enabled(quiet)).summary())
        return
    from vidfeat.synth import SynthConfig, generate

    cfg = SynthConfig(
        classes=classes,
        per_class=per_class,
        seconds=seconds,
        fps=fps,
        size=size,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction or 0.0,
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
