"""``vidfeat store`` (``info``, ``verify``, ``export``: what a feature store holds, whether it
is sound, its sets as one file per video) and ``vidfeat show`` (one video's contact sheet)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vidfeat.cli.base import Command, Group
from vidfeat.cli.options import QUIET, VIDEO_ROOT, RegistryChoice, video_root_applies


@click.group(cls=Group)
def store() -> None:
    """Feature stores: what they hold, and whether every shard is sound."""


@store.command("info")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
def store_info_cmd(root: Path) -> None:
    """Each set of the store: configuration, videos, size on disk, failures."""
    from vidfeat.store import format_info, store_info

    click.echo(format_info(store_info(root)))


@store.command("verify")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--videos",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A video list whose ids must all be present (missing/unexpected reported).",
)
@VIDEO_ROOT
def store_verify_cmd(root: Path, videos: Path | None, video_root: Path | None) -> None:
    """Open every shard; check shapes, dtypes and NaNs; report duplicates and partial files.

    Exits non-zero on problems.
    """
    from vidfeat.store import format_verify, verify_store
    from vidfeat.videolist import load_list

    video_root_applies(video_root, videos)
    expect = set(load_list(videos, video_root=video_root).ids()) if videos else None
    rep = verify_store(root, expect_ids=expect)
    click.echo(format_verify(rep))
    if not rep.ok:
        sys.exit(1)


def export_formats() -> list[str]:
    from vidfeat.export import FORMATS

    return list(FORMATS)


def export_layouts() -> list[str]:
    from vidfeat.layouts import LAYOUTS

    return list(LAYOUTS)


@store.command("export")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--set",
    "set_name",
    required=True,
    help="The set to export (see `store info`); with --layout several, comma-separated "
    "(rgb,flow): their rows concatenated along C in that order.",
)
@click.option(
    "--layout",
    type=RegistryChoice(export_layouts),
    help="Row sets as a localisation codebase reads them: actionformer (<id>.npy (L, C) + "
    "actionformer.yaml), bmn (mmaction2: <id>.csv of --steps rows), gtad (one <split>.h5).",
)
@click.option(
    "--format",
    "fmt",
    type=RegistryChoice(export_formats),
    help="Without --layout (default npy): npy: (T, D) float32 per file; npz: key 'features'; "
    "csv: T rows x D columns + header.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for one file per video id (gtad: one .h5), manifest.csv and export.json.",
)
@click.option(
    "--prefix",
    help="--layout: put this before every id in file names (gtad: dataset names), e.g. v_.",
)
@click.option(
    "--steps",
    type=int,
    help="--layout bmn: rows per video, resampled as mmaction2 does (default 100).",
)
@click.option(
    "--split",
    help="--layout gtad: the HDF5 file's name without .h5, e.g. rgb_val (default features).",
)
@click.option(
    "--videos",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Export only this list's ids (ids missing from the set are listed; exit 1).",
)
@VIDEO_ROOT
@click.option(
    "--with-scores",
    is_flag=True,
    help="Also the clip scores (npz key 'scores', else <id>.scores.npy) and top-1 in the manifest.",
)
@click.option(
    "--flatten",
    is_flag=True,
    help="Export sets of more than (T, D) per video (flow fields) as (T, prod(rest)) rows.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Export into a folder holding other content; rewrite files instead of skipping them.",
)
@QUIET
def store_export_cmd(
    root: Path,
    set_name: str,
    layout: str | None,
    fmt: str | None,
    out: Path,
    prefix: str | None,
    steps: int | None,
    split: str | None,
    videos: Path | None,
    video_root: Path | None,
    with_scores: bool,
    flatten: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write one (T, D) float32 file per video of a set, named by its id, plus manifest.csv;
    or, with --layout, untrimmed row sets as ActionFormer, BMN (mmaction2) or G-TAD read them.

    Resumable: files already written are skipped. Exits 1 when ids are missing from the set
    or videos failed; a full disk or file-size limit stops it with one line (exit 2).
    """
    from vidfeat.export import export_set
    from vidfeat.videolist import load_list

    video_root_applies(video_root, videos)
    names = set_name.split(",")
    _export_options_apply(layout, names, fmt, with_scores, flatten, prefix, steps, split)
    ids = load_list(videos, video_root=video_root).ids() if videos else None
    if layout is not None:
        from vidfeat.layouts import export_layout

        rep = export_layout(
            root,
            names,
            out,
            layout,
            video_ids=ids,
            prefix=prefix or "",
            steps=steps,
            split=split,
            overwrite=overwrite,
            progress=not quiet,
        )
    else:
        rep = export_set(
            root,
            set_name,
            out,
            fmt or "npy",
            video_ids=ids,
            with_scores=with_scores,
            flatten=flatten,
            overwrite=overwrite,
            progress=not quiet,
        )
    for line in rep.problem_lines():
        click.echo(line, err=True)
    click.echo(rep.summary())
    if not rep.ok:
        sys.exit(1)


def _export_options_apply(
    layout: str | None,
    names: list[str],
    fmt: str | None,
    with_scores: bool,
    flatten: bool,
    prefix: str | None,
    steps: int | None,
    split: str | None,
) -> None:
    """Refuse, before any work, the options of `store export` that would change nothing."""
    if layout is None:
        given = [("--prefix", prefix is not None), ("--steps", steps is not None)]
        given += [("--split", split is not None)]
        for flag, on in given:
            if on:
                raise click.UsageError(
                    f"{flag} applies with --layout (actionformer, bmn or gtad; see --help); "
                    "the per-file formats name files by id alone"
                )
        if len(names) > 1:
            raise click.UsageError(
                f"--set {','.join(names)}: several sets are concatenated only with --layout; "
                "--format exports one set: run one export per set"
            )
        return
    why = {
        "--format": (fmt is not None, "a layout fixes its files (actionformer .npy, bmn .csv, "
                     "gtad .h5)"),
        "--with-scores": (with_scores, "the layouts hold features only"),
        "--flatten": (flatten, "the layouts take (L, D) row sets"),
    }  # fmt: skip
    for flag, (on, reason) in why.items():
        if on:
            raise click.UsageError(f"{flag} applies without --layout: {reason}; drop {flag}")
    from vidfeat.layouts import check_layout_options

    check_layout_options(layout, prefix=prefix or "", steps=steps, split=split)


@click.command("show", cls=Command)
@click.argument("video_id")
@click.option(
    "--store", required=True, type=click.Path(exists=True, file_okay=False), help="Feature store."
)
@click.option(
    "--videos",
    type=click.Path(exists=True, dir_okay=False),
    help="A video list to find the file in when it moved (default: the stored source_path).",
)
@VIDEO_ROOT
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option(
    "--annotations",
    type=click.Path(exists=True, dir_okay=False),
    help="ActivityNet/THUMOS JSON (e.g. a synth --untrimmed set's annotations.json): shade the "
    "video's annotated intervals on the score timelines of row sets.",
)
def show(
    video_id: str,
    store: str,
    videos: str | None,
    video_root: str | None,
    out: str,
    annotations: str | None,
) -> None:
    """A contact sheet of one video: frames, flow fields, audio, feature norms, clip scores,
    and per-row score timelines of row sets (snippets / windows grids)."""
    from vidfeat.show import contact_sheet

    video_root_applies(video_root, videos)
    res = contact_sheet(
        store, video_id, out, videos, video_root=video_root, annotations=annotations
    )
    click.echo(res.summary())
