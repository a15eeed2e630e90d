"""``vidfeat extract flow|rgb|audio``: per-segment features of a video list into a store.

Every command shares :func:`run_options` (the list, the store, the grid, and the fields of
``RunOptions``, generated from them) and hands its work to one use case of
:mod:`vidfeat.extract`: ``extract_flow_fields`` (flow without a network), or
``extract_flow_features``, ``extract_rgb_features``, ``extract_audio_features`` (a network).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from vidfeat.cli.base import Group
from vidfeat.cli.options import (
    DEVICE,
    PRECISION,
    VIDEO_ROOT,
    RegistryChoice,
    apply,
    config_values,
    dataclass_options,
    flow_method_names,
    flow_method_options,
    flow_params,
    given,
    not_applicable,
    progress_enabled,
    video_root_applies,
)


@click.group(cls=Group)
def extract() -> None:
    """Extract per-segment features of a video list into a feature store."""


def _run_options_class() -> type:
    from vidfeat.extract import RunOptions

    return RunOptions


def run_options(f: Any) -> Any:
    """The options every `vidfeat extract` command shares: the list, the store, the grid, and
    how the run goes (one option per field of ``RunOptions``)."""
    return apply(
        f,
        [
            click.option(
                "--videos",
                "video_list",
                required=True,
                type=click.Path(dir_okay=False, path_type=Path),
                help="Video list (CSV with path[,label,...], Kinetics CSV, or text).",
            ),
            VIDEO_ROOT,
            click.option(
                "--store",
                "store_root",
                required=True,
                type=click.Path(file_okay=False, path_type=Path),
                help="Feature store.",
            ),
            click.option("--name", help="Set name in the store (default depends on the modality)."),
            click.option(
                "--segments",
                "-T",
                default=25,
                show_default=True,
                help="Segments per video (the paper tests with 25).",
            ),
            click.option(
                "--frames",
                "-N",
                default=5,
                show_default=True,
                help="Frames per segment or snippet (flow: pairs per segment or snippet).",
            ),
            click.option(
                "--grid",
                type=click.Choice(GRIDS),
                default="segments",
                show_default=True,
                help="segments: T equal segments per video (trimmed clips, (T, D)); snippets: "
                "N frames centred every --stride frames; windows: --window frames every "
                "--stride frames (untrimmed video, (L, D) with L growing with the video). "
                "extract rgb also takes reference: the authors' test reader.",
            ),
            click.option(
                "--stride",
                type=click.IntRange(min=1),
                help="snippets/windows: frames between rows (e.g. 16; I3D's THUMOS features: 4).",
            ),
            click.option(
                "--window",
                type=click.IntRange(min=1),
                help="windows: frames per row (e.g. 16); with a clip network (I3D, torchvision "
                "video) on the segments grid: frames per segment [default: its clip length].",
            ),
            click.option(
                "--fps",
                type=click.FloatRange(min=0, min_open=True, max=1000),
                help="snippets/windows: take frames at this rate by their timestamps (the "
                "frame nearest each k/F) instead of the video's own frames.",
            ),
            dataclass_options(_run_options_class),
        ],
    )


def network_options(f: Any) -> Any:
    """Options of commands that run a trained network."""
    return apply(
        f,
        [
            click.option(
                "--checkpoint",
                type=click.Path(exists=True, path_type=Path),
                help="A `vidfeat train` run folder (its best.pt) or a checkpoint in one.",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                help="Videos per forward pass on the segments grid [default: as many as make "
                "32 segments, at least 1]; rows per forward pass on snippets/windows "
                "[default: 32].",
            ),
            DEVICE,
            PRECISION,
        ],
    )


GRIDS = ["segments", "snippets", "windows", "reference", "centred"]


def row_grid_options(command: str, kw: dict[str, Any]) -> dict[str, Any] | None:
    """The grid of rows the options ask for (None: the segments grid). Options of the other
    kind of grid are refused, naming it."""
    mode = kw["grid"]
    segment_grid = mode in ("segments", "reference", "centred")
    # --window on the segments grid: a clip network's frames per segment (rgb, flow)
    clip_window = segment_grid and command != "extract audio"
    rows_only = [
        f
        for f in ("stride", "window", "fps")
        if kw[f] is not None and not (f == "window" and clip_window)
    ]
    if segment_grid:
        if rows_only:
            flags = ", ".join(f"--{f}" for f in rows_only)
            raise click.UsageError(
                f"{flags} apply to --grid snippets|windows (untrimmed video); the {mode} grid "
                "has T segments per video (-T)"
            )
        if mode != "segments" and command != "extract rgb":
            raise click.UsageError(
                f"--grid {mode} is extract rgb's (the authors' test reader); use segments, "
                "snippets or windows"
            )
        return None
    if given("segments"):
        not_applicable(
            "segments",
            f"is the segments grid's; --grid {mode} gives each video as many rows as its "
            "length (--stride)",
        )
    return {"mode": mode, "stride": kw["stride"], "window": kw["window"], "fps": kw["fps"]}


def segments_batch(kw: dict[str, Any]) -> int:
    """--batch-size on the segments grid: videos per forward pass; by default as many as make
    about 32 rows (segments), at least one: a batch's memory grows with videos x T."""
    from vidfeat.extract.rows import DEFAULT_ROWS

    return kw["batch_size"] or max(1, DEFAULT_ROWS // max(1, kw["segments"]))


def build_run_options(kw: dict[str, Any]) -> Any:
    """The ``RunOptions`` of the parsed options ``kw``; another engine's options than the
    run's are refused."""
    from vidfeat.extract import RunOptions, parse_shard, refuse_foreign_options

    opts = RunOptions(
        **{
            **config_values(RunOptions, kw),
            "shard": parse_shard(kw["shard"]),
            "ray_local_cpus": kw["workers"],  # None: a local Ray instance takes all CPUs
            "progress": progress_enabled(kw["quiet"]),
        }
    )
    refuse_foreign_options(opts, {name for name in kw if given(name)})
    return opts


def videos(kw: dict[str, Any]) -> Any:
    """The video list of --videos (and --video-root); files it lacks are noted on stderr."""
    from vidfeat.videolist import load_list

    video_root_applies(kw["video_root"], kw["video_list"])
    listed = load_list(kw["video_list"], video_root=kw["video_root"])
    note = listed.missing_note()
    if note:
        click.echo(f"note: {note}", err=True)
    return listed


def refuse_frames(command: str, why: str) -> None:
    """-N is shared by every extract command; where N is not the user's to set, passing it is
    refused rather than ignored."""
    if given("frames"):
        raise click.UsageError(f"{command} takes no -N/--frames: {why}")


def refuse_timeout_in_process(kw: dict[str, Any]) -> None:
    """A network extraction bounds a batch's decode in its DataLoader workers; with
    --workers 0 the clips decode in this process, where no --timeout can act."""
    if kw["workers"] == 0 and kw["timeout"] > 0 and given("timeout"):
        raise click.UsageError(
            f"--timeout {kw['timeout']:g} bounds the decode of a batch in a DataLoader worker; "
            "with --workers 0 the clips decode in this process, where nothing can bound them: "
            "pass --workers 1 or more, or leave --timeout out"
        )


def finish(rep: Any, store_root: Path, set_name: str) -> None:
    """Print the run's summary (and where its failures are), exit with its code."""
    click.echo(rep.summary())
    if rep.failed:
        click.echo(
            f"failures are listed in {Path(store_root) / set_name}/failures-*.jsonl; "
            "fix or drop those videos, then rerun with --retry-failed",
            err=True,
        )
    sys.exit(rep.exit_code)


# --------------------------------------------------------------------------- flow


@extract.command("flow")
@click.option(
    "--method",
    type=RegistryChoice(flow_method_names),
    required=True,
    help="Optical flow algorithm.",
)
@click.option(
    "--short-side",
    default=256,
    show_default=True,
    help="Frames are resized so their short side has this many pixels.",
)
@click.option(
    "--bound",
    default=20.0,
    show_default=True,
    help="Flow is clipped to +-bound pixels and stored as uint8.",
)
@click.option("--fields-name", help="Set holding the flow fields (default <method>-fields).")
@click.option(
    "--keep-fields",
    is_flag=True,
    help="--grid snippets|windows with --checkpoint: also store the rows' fields in "
    "--fields-name (by default they go straight into the network: an hour of fields is GBs).",
)
@click.option(
    "--crop-size",
    type=click.IntRange(min=16),
    help="With --checkpoint: the network's test crop [default: the run's training size].",
)
@run_options
@network_options
@flow_method_options
def extract_flow(method: str, **kw: Any) -> None:
    """Optical flow on the grid's frame pairs (T x N pairs, never all pairs of a video).

    Without --checkpoint the fields themselves are stored as set `<method>-fields`, uint8
    `(T, N, 2, H, W)`: the input of the flow networks, reusable without recomputing flow.
    With --checkpoint (a `vidfeat train flow` run) the missing fields are computed first, then
    the network's per-segment features `(T, D)` and clip scores go to set `<method>`.

    --method raft runs on --device (default: CUDA when available), --batch-size frame pairs per
    forward pass (default: all of a video's pairs that fit in memory), in --precision; the
    OpenCV methods (dis, farneback, tvl1) refuse all three: each of --workers W processes gets
    cores/W threads instead. tvl1-torch keeps float32 (its agreement with OpenCV needs it): it
    refuses --precision bf16/fp16, and with --checkpoint --precision applies to the network.
    """
    params = flow_params(method, kw)
    fields_set = kw["fields_name"] or f"{method}-fields"
    grid = row_grid_options("extract flow", kw)
    if grid is None and kw["keep_fields"]:
        raise click.UsageError(
            "--keep-fields applies to --grid snippets|windows with --checkpoint: on the "
            "segments grid the fields set is always kept"
        )
    if grid is not None:
        set_name = kw["name"] or (method if kw["checkpoint"] else fields_set)
        finish(_flow_rows(method, params, fields_set, set_name, grid, kw), kw["store_root"],
               set_name)  # fmt: skip
    if kw["checkpoint"] is None:
        if kw["window"] is not None:
            raise click.UsageError(
                "--window on the segments grid is a clip network's frames per segment (with "
                "--checkpoint); the fields alone take -N pairs per segment"
            )
        set_name = kw["name"] or fields_set
        rep = _flow_fields(method, params, set_name, kw)
    else:
        set_name = kw["name"] or method
        rep = _flow_features(method, params, fields_set, set_name, kw)
    finish(rep, kw["store_root"], set_name)


def _flow_rows(
    method: str, params: dict[str, Any], fields_set: str, set_name: str, grid: dict,
    kw: dict[str, Any],
) -> Any:  # fmt: skip
    """`extract flow --grid snippets|windows`: the rows' fields, or a network on them."""
    from vidfeat.extract.rows import extract_flow_rows

    if kw["checkpoint"] is None:
        for flag in ("crop_size",):
            if kw[flag] is not None:
                raise click.UsageError("--crop-size applies with --checkpoint (the network's crop)")
        if kw["float16"]:
            raise click.UsageError("--float16 narrows float features; flow fields are uint8")
    else:
        refuse_timeout_in_process(kw)
        if given("frames"):
            raise click.UsageError(
                "-N: the flow network reads its own pairs per row (its run records N); leave -N out"
            )
    uses_device = kw["checkpoint"] is not None
    return extract_flow_rows(
        videos(kw),
        kw["store_root"],
        method=method,
        params=params,
        set_name=set_name,
        fields_set=fields_set,
        checkpoint=kw["checkpoint"],
        grid=grid,
        frames=kw["frames"],
        # with a network: the scale of its training fields unless given
        short_side=kw["short_side"] if (given("short_side") or not kw["checkpoint"]) else None,
        bound=kw["bound"],
        keep_fields=kw["keep_fields"],
        batch_size=kw["batch_size"],
        device=kw["device"],
        precision=kw["precision"],
        crop_size=kw["crop_size"],
        opts=build_run_options(kw),
        runtime={
            "device": kw["device"] if (uses_device or given("device")) else None,
            "weights": kw["flow_weights"],
            "precision": kw["precision"] if given("precision") else None,
        },
        echo=click.echo,
    )


def _flow_fields(method: str, params: dict[str, Any], set_name: str, kw: dict[str, Any]) -> Any:
    """`extract flow` without --checkpoint: the fields are the set."""
    from vidfeat.extract.fields import extract_flow_fields

    if kw["crop_size"] is not None:
        raise click.UsageError(
            "--crop-size applies with --checkpoint (the network's crop); fields are stored whole"
        )
    if kw["name"] and kw["fields_name"] and kw["name"] != kw["fields_name"]:
        raise click.UsageError(
            f"without --checkpoint the flow fields are the set: --name {kw['name']} and "
            f"--fields-name {kw['fields_name']} both name it; give one"
        )
    if kw["float16"]:
        raise click.UsageError(
            "--float16 narrows float features; flow fields are stored as uint8 (with "
            "--checkpoint it narrows the network's features)"
        )
    opts = build_run_options(kw)  # --ray-address without --engine ray is refused here
    if opts.ray_address and given("workers"):
        raise click.UsageError(
            "--workers sizes a local Ray instance; with --ray-address the cluster runs the "
            "tasks: reserve CPUs per task with --ray-num-cpus instead"
        )
    return extract_flow_fields(
        videos(kw),
        kw["store_root"],
        method=method,
        params=params,
        set_name=set_name,
        segments=kw["segments"],
        frames=kw["frames"],
        short_side=kw["short_side"],
        bound=kw["bound"],
        opts=opts,
        # --device and --batch-size act on a method that runs on a torch device (RAFT) and
        # are refused, with the reason, by a CPU method
        runtime={
            "device": kw["device"] if given("device") else None,
            "batch_size": kw["batch_size"] if given("batch_size") else None,
            "weights": kw["flow_weights"],
            "precision": kw["precision"] if given("precision") else None,
        },
        echo=click.echo,
    )


def _flow_features(
    method: str, params: dict[str, Any], fields_set: str, set_name: str, kw: dict[str, Any]
) -> Any:
    """`extract flow --checkpoint RUN`: the fields where missing, then the network."""
    from vidfeat.extract.network import extract_flow_features

    refuse_timeout_in_process(kw)
    return extract_flow_features(
        videos(kw),
        kw["store_root"],
        method=method,
        params=params,
        fields_set=fields_set,
        set_name=set_name,
        checkpoint=kw["checkpoint"],
        segments=kw["segments"],
        short_side=kw["short_side"],
        bound=kw["bound"],
        batch_size=segments_batch(kw),
        device=kw["device"],
        opts=build_run_options(kw),
        echo=click.echo,
        precision=kw["precision"],
        # not --batch-size (the network's); --precision where the method takes it (RAFT)
        flow_runtime={
            "device": kw["device"],
            "weights": kw["flow_weights"],
            "precision": kw["precision"] if given("precision") else None,
        },
        crop_size=kw["crop_size"],
        window=kw["window"],
        given={  # the field options given, refused where the fields set or network fix them
            **{k: kw[k] for k in ("short_side", "bound", "frames") if given(k)},
            **params,  # only the method options given
        },
    )


# --------------------------------------------------------------------------- rgb, audio


@extract.command("rgb")
@run_options
@network_options
@click.option(
    "--crop-size",
    type=click.IntRange(min=16),
    help="Test crop in pixels [default: the run's recorded test crop: the training size for "
    "vidfeat runs, 256 for the authors' StNet].",
)
def extract_rgb(**kw: Any) -> None:
    """Per-segment RGB features `(T, D)` and clip scores of a trained StNet/TSN (set `rgb`).

    The network's frames-per-segment N comes from its run; -T/--segments sets the grid
    (the paper tests with 25).
    """
    from vidfeat.extract.network import extract_rgb_features

    if kw["checkpoint"] is None:
        raise click.UsageError(
            "extract rgb needs --checkpoint RUN: train one with `vidfeat train rgb`, or import "
            "released weights with `vidfeat models import`"
        )
    refuse_frames("extract rgb", "frames per segment are the network's (its run records N)")
    refuse_timeout_in_process(kw)
    set_name = kw["name"] or "rgb"
    grid = row_grid_options("extract rgb", kw)
    if grid is not None:
        from vidfeat.extract.rows import extract_rgb_rows

        rep = extract_rgb_rows(
            videos(kw),
            kw["store_root"],
            set_name=set_name,
            checkpoint=kw["checkpoint"],
            grid=grid,
            batch_size=kw["batch_size"],
            device=kw["device"],
            precision=kw["precision"],
            crop_size=kw["crop_size"],
            opts=build_run_options(kw),
            echo=click.echo,
        )
        finish(rep, kw["store_root"], set_name)
    rep = extract_rgb_features(
        videos(kw),
        kw["store_root"],
        set_name=set_name,
        checkpoint=kw["checkpoint"],
        segments=kw["segments"],
        batch_size=segments_batch(kw),
        device=kw["device"],
        precision=kw["precision"],
        opts=build_run_options(kw),
        echo=click.echo,
        crop_size=kw["crop_size"],
        grid="reference" if kw["grid"] == "reference" else "centred",
        window=kw["window"],
    )
    finish(rep, kw["store_root"], set_name)


@extract.command("audio")
@run_options
@network_options
@click.option(
    "--pca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="vggish_pca_params.pth: PCA + clip + 8-bit quantisation (AudioSet format).",
)
@click.option(
    "--embedding",
    type=click.Choice(["pre-relu", "post-relu"]),
    default="pre-relu",
    show_default=True,
    help="VGGish embedding point (see README); a `train audio` run's is its own.",
)
@click.option(
    "--random-init",
    is_flag=True,
    help="Smoke tests only: random VGGish weights (recorded in set.json).",
)
def extract_audio(**kw: Any) -> None:
    """VGGish audio features on the grid: one 0.96 s log-mel example per segment (set `audio`).

    --checkpoint takes VGGish weights (vggish-10086976.pth) or a `vidfeat train audio` run.
    Videos without an audio track store zeros with has_audio=false (not a failure).
    """
    from vidfeat.extract.network import extract_audio_features

    refuse_timeout_in_process(kw)
    set_name = kw["name"] or "audio"
    grid = row_grid_options("extract audio", kw)
    if grid is not None:
        from vidfeat.extract.rows import extract_audio_rows

        rep = extract_audio_rows(
            videos(kw),
            kw["store_root"],
            set_name=set_name,
            checkpoint=kw["checkpoint"],
            pca=kw["pca"],
            embedding=kw["embedding"] if given("embedding") else None,
            random_init=kw["random_init"],
            grid=grid,
            # the rows' frames (their times) match a video set's of -N frames; 1 by default
            frames=kw["frames"] if given("frames") else 1,
            batch_size=kw["batch_size"],
            device=kw["device"],
            precision=kw["precision"],
            opts=build_run_options(kw),
            echo=click.echo,
        )
        finish(rep, kw["store_root"], set_name)
    refuse_frames("extract audio", "audio takes one 0.96 s example per segment")
    rep = extract_audio_features(
        videos(kw),
        kw["store_root"],
        set_name=set_name,
        checkpoint=kw["checkpoint"],
        pca=kw["pca"],
        embedding=kw["embedding"] if given("embedding") else None,  # a run's is its own
        random_init=kw["random_init"],
        segments=kw["segments"],
        batch_size=segments_batch(kw),
        device=kw["device"],
        precision=kw["precision"],
        opts=build_run_options(kw),
        echo=click.echo,
    )
    finish(rep, kw["store_root"], set_name)
