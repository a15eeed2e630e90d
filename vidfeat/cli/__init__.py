"""The ``vidfeat`` command line: thin Click commands over the library.

Commands parse and validate options, call one library function and print its report. Heavy
imports (torch, cv2, av, h5py) happen inside command bodies so ``vidfeat --help`` is instant.
Errors derive from ``vidfeat.errors.VidfeatError`` (a ClickException): Click prints the message
and exits non-zero, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vidfeat import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# --------------------------------------------------------------------------- shared options
# Declared once: the same flag means the same thing, with the same help, in every command.

VIDEO_ROOT = click.option(
    "--video-root",
    type=click.Path(file_okay=False),
    help="Folder of the videos of a Kinetics CSV (ids resolve to class/id files below it).",
)
DEVICE = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
)
SEED = click.option(
    "--seed", default=0, show_default=True, help="Random seed (same seed, same run)."
)
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


def _given(name: str) -> bool:
    """True when option ``name`` was given (command line or environment), not defaulted."""
    from click.core import ParameterSource

    src = click.get_current_context().get_parameter_source(name)
    return src not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _video_root_applies(video_root, *lists) -> None:
    """--video-root resolves the ids of a Kinetics CSV to files below it; with lists that name
    their files (paths relative to the list) it would change nothing, so it is refused."""
    if video_root is None:
        return
    from vidfeat.videolist import list_format

    formats = {str(p): list_format(p) for p in lists if p is not None}
    if not formats:
        raise click.UsageError("--video-root applies only with --videos (it resolves that list)")
    if not any(f in ("kinetics", None) for f in formats.values()):  # None: the loader says why
        raise click.UsageError(
            f"--video-root applies to a Kinetics CSV (its ids resolve to files below the root); "
            f"{', '.join(formats)} names its files (relative to the list's folder): leave "
            "--video-root out"
        )


class RegistryChoice(click.Choice):
    """``click.Choice`` over a registry's names, read when first needed: ``vidfeat --help``
    stays instant while the choices stay the registry's own (a new entry needs no CLI edit)."""

    def __init__(self, names) -> None:
        self._names = names
        self._cached: tuple[str, ...] | None = None
        super().__init__([], case_sensitive=True)

    @property
    def choices(self):  # type: ignore[override]
        if self._cached is None:
            self._cached = tuple(self._names())
        return self._cached

    @choices.setter
    def choices(self, value) -> None:  # click's __init__ assigns the (empty) list
        pass


def _flow_method_names() -> list[str]:
    from vidfeat.flow import FLOW_METHODS

    return FLOW_METHODS.names()


def _segment_net_names() -> list[str]:
    from vidfeat.nets import SEGMENT_NETS

    return SEGMENT_NETS.names()


@click.group(context_settings={**CONTEXT, "auto_envvar_prefix": "VIDFEAT"})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _, value: _print_version(ctx) if value else None,
    help="Show vidfeat's version and those of torch, timm, OpenCV, PyAV; whether CUDA works.",
)
def main() -> None:
    """Per-segment multi-modal video features (RGB, optical flow, audio) and fusion models.

    Start with `vidfeat data synth OUT` for a dataset that needs no download. Every option can
    also come from the environment as VIDFEAT_<COMMAND>_<OPTION>, e.g.
    VIDFEAT_TRAIN_RGB_EPOCHS=5 (an option on the command line wins).
    """


def _print_version(ctx: click.Context) -> None:
    """The first lines of a bug report: vidfeat's version, the libraries that compute the
    features, and whether this torch sees a GPU."""
    from vidfeat.provenance import environment_report

    click.echo(f"vidfeat {__version__}")
    for name, value in environment_report().items():
        click.echo(f"  {name:<8} {value}")
    ctx.exit()


# --------------------------------------------------------------------------- data


@main.group()
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
    rep = generate(out, cfg, progress=not quiet and sys.stderr.isatty())
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

    _video_root_applies(video_root, video_list)
    rep = probe_list(video_list, video_root=video_root, echo=click.echo, quiet=quiet)
    click.echo(rep.summary())
    if rep.failed:
        sys.exit(1)


# --------------------------------------------------------------------------- store


@main.group()
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

    _video_root_applies(video_root, videos)
    expect = set(load_list(videos, video_root=video_root).ids()) if videos else None
    rep = verify_store(root, expect_ids=expect)
    click.echo(format_verify(rep))
    if not rep.ok:
        sys.exit(1)


def _export_formats() -> list[str]:
    from vidfeat.export import FORMATS

    return list(FORMATS)


@store.command("export")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--set", "set_name", required=True, help="The set to export (see `store info`).")
@click.option(
    "--format",
    "fmt",
    type=RegistryChoice(_export_formats),
    default="npy",
    show_default=True,
    help="npy: (T, D) float32 per file; npz: key 'features'; csv: T rows x D columns + header.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for one file per video id, manifest.csv and export.json.",
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
    fmt: str,
    out: Path,
    videos: Path | None,
    video_root: Path | None,
    with_scores: bool,
    flatten: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write one (T, D) float32 file per video of a set, named by its id, plus manifest.csv.

    The layout action localisation tools read (np.load(f) -> (T, D)). Resumable: files
    already written are skipped. Exits 1 when ids are missing from the set or videos failed.
    """
    from vidfeat.export import export_set
    from vidfeat.videolist import load_list

    _video_root_applies(video_root, videos)
    ids = load_list(videos, video_root=video_root).ids() if videos else None
    rep = export_set(
        root,
        set_name,
        out,
        fmt,
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


# --------------------------------------------------------------------------- extract


@main.group()
def extract() -> None:
    """Extract per-segment features of a video list into a feature store."""


def run_options(f):
    """The options every `vidfeat extract` command shares (resume, shards, workers)."""
    opts = [
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
            help="Frames per segment (flow: pairs per segment).",
        ),
        click.option(
            "--workers",
            "-j",
            type=click.IntRange(min=0),
            help="Worker processes (decode + compute) [default: 1; a local Ray instance: "
            "all CPUs].",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0),
            default=600.0,
            show_default=True,
            help="Seconds one video may take; past it the video fails as Timeout and the run "
            "goes on (0 = no limit; with --workers 1 it then runs in this process). With "
            "--checkpoint a stuck decode stops the run instead of hanging it.",
        ),
        click.option("--shard", help="Take shard i of N (0-based), e.g. 3/8, for job arrays."),
        click.option("--limit", type=int, help="Process at most this many videos."),
        click.option("--dry-run", is_flag=True, help="Show what would be done, write nothing."),
        click.option(
            "--retry-failed", is_flag=True, help="Only the videos in the set's failures files."
        ),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Redo videos already in the set (the newest copy wins).",
        ),
        click.option("--job", help="Job name in shard file names (default: time-host-pid)."),
        click.option(
            "--shard-videos",
            default=64,
            show_default=True,
            help="Close a shard file after this many videos.",
        ),
        click.option(
            "--shard-mb", default=256.0, show_default=True, help="...or after this many megabytes."
        ),
        click.option(
            "--compression",
            type=click.Choice(["auto", "gzip", "lzf", "none"]),
            default="auto",
            show_default=True,
            help="auto: gzip for integer arrays (flow fields), float features uncompressed "
            "(they barely compress; contiguous arrays read fastest).",
        ),
        click.option("--float16", is_flag=True, help="Store float features as float16."),
        click.option(
            "--min-free-mb",
            default=64.0,
            show_default=True,
            help="Stop cleanly when the store's disk has less free space than this.",
        ),
        click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="local processes, or Ray tasks (pip install 'vidfeat[ray]').",
        ),
        click.option("--ray-address", help="Join this Ray cluster (default: start a local one)."),
        click.option(
            "--ray-num-cpus", default=1.0, show_default=True, help="CPUs reserved per Ray task."
        ),
        click.option(
            "--ray-num-gpus", default=0.0, show_default=True, help="GPUs reserved per Ray task."
        ),
        click.option(
            "--chunk-videos", type=int, help="Videos per Ray task (default: --shard-videos)."
        ),
        QUIET,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _videos(kw: dict):
    from vidfeat.videolist import load_list

    _video_root_applies(kw["video_root"], kw["video_list"])
    videos = load_list(kw["video_list"], video_root=kw["video_root"])
    note = videos.missing_note()
    if note:
        click.echo(f"note: {note}", err=True)
    return videos


RAY_OPTIONS = {
    "ray_address": "--ray-address",
    "ray_num_cpus": "--ray-num-cpus",
    "ray_num_gpus": "--ray-num-gpus",
    "chunk_videos": "--chunk-videos",
}


def _run_options(kw: dict):
    from vidfeat.extract import RunOptions, parse_shard

    if kw["engine"] != "ray":
        ray_only = [flag for name, flag in RAY_OPTIONS.items() if _given(name)]
        if ray_only:
            raise click.UsageError(
                f"{', '.join(ray_only)} apply to --engine ray (this run's engine is "
                f"{kw['engine']}): add --engine ray, or leave them out"
            )
    return RunOptions(
        workers=1 if kw["workers"] is None else kw["workers"],
        ray_local_cpus=kw["workers"],  # None: a local Ray instance takes the machine's CPUs
        timeout=kw["timeout"],
        shard=parse_shard(kw["shard"]),
        limit=kw["limit"],
        dry_run=kw["dry_run"],
        retry_failed=kw["retry_failed"],
        overwrite=kw["overwrite"],
        job=kw["job"],
        shard_videos=kw["shard_videos"],
        shard_mb=kw["shard_mb"],
        compression=None if kw["compression"] == "none" else kw["compression"],
        float16=kw["float16"],
        min_free_mb=kw["min_free_mb"],
        progress=not kw["quiet"] and sys.stderr.isatty(),
        engine=kw["engine"],
        ray_address=kw["ray_address"],
        ray_num_cpus=kw["ray_num_cpus"],
        ray_num_gpus=kw["ray_num_gpus"],
        chunk_videos=kw["chunk_videos"],
    )


def _refuse_frames(command: str, why: str) -> None:
    """-N is shared by every extract command; where N is not the user's to set, passing it is
    refused rather than ignored."""
    ctx = click.get_current_context()
    if ctx.get_parameter_source("frames") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError(f"{command} takes no -N/--frames: {why}")


def _refuse_timeout_in_process(kw: dict) -> None:
    """A network extraction bounds a batch's decode in its DataLoader workers; with
    --workers 0 the clips decode in this process, where no --timeout can act."""
    if kw["workers"] == 0 and kw["timeout"] > 0 and _given("timeout"):
        raise click.UsageError(
            f"--timeout {kw['timeout']:g} bounds the decode of a batch in a DataLoader worker; "
            "with --workers 0 the clips decode in this process, where nothing can bound them: "
            "pass --workers 1 or more, or leave --timeout out"
        )


def _finish(rep, store_root: Path, set_name: str) -> None:
    click.echo(rep.summary())
    if rep.failed:
        click.echo(
            f"failures are listed in {Path(store_root) / set_name}/failures-*.jsonl; "
            "fix or drop those videos, then rerun with --retry-failed",
            err=True,
        )
    sys.exit(rep.exit_code)


def _run(extractor, set_name: str, kw: dict) -> None:
    from vidfeat.extract import run_extraction

    opts = _run_options(kw)
    rep = run_extraction(_videos(kw), extractor, kw["store_root"], set_name, opts, echo=click.echo)
    _finish(rep, kw["store_root"], set_name)


def flow_method_options(f):
    """One option per algorithm parameter of every flow method (OpenCV's defaults), and
    --flow-weights for the methods that run a network."""
    from vidfeat.flow import (
        FLOW_METHODS,
        method_param_fields,
        option_name,
        param_choices,
        param_default_text,
        param_type,
    )

    owned: dict[str, tuple[str, object]] = {}  # option → (method, field): the first method's
    for name in FLOW_METHODS.names():
        for fld in method_param_fields(name):
            owned.setdefault(option_name(fld.name), (name, fld))
    f = click.option(
        "--flow-weights",
        type=click.Path(exists=True, dir_okay=False),
        help="[raft] Weights of the flow network (a state dict file); default: torchvision's "
        "file in the torch hub cache (nothing is downloaded).",
    )(f)
    # click lists options in the reverse order of decoration: reversed, --help shows each
    # method's options in their declared order, the methods alphabetically
    for opt, (name, fld) in reversed(owned.items()):
        choices, kind = param_choices(fld), param_type(fld)
        f = click.option(
            opt,
            fld.name,
            type=click.Choice(choices) if choices else (click.BOOL if kind is bool else kind),
            default=None,
            help=f"[{name}] {fld.metadata.get('help', '')} (default {param_default_text(fld)})",
        )(f)
    return f


def _flow_params(method: str, kw: dict) -> dict:
    """Pop every flow-algorithm option from ``kw``; the ones given must belong to ``method``."""
    from vidfeat.flow import FLOW_METHODS, method_param_fields

    mine = {fld.name for fld in method_param_fields(method)}
    every = {fld.name for n in FLOW_METHODS.names() for fld in method_param_fields(n)}
    given = {k: kw.pop(k) for k in list(kw) if k in every}
    other = [k for k, v in given.items() if v is not None and k not in mine]
    if other:
        raise click.UsageError(
            f"{', '.join('--' + o.rstrip('_').replace('_', '-') for o in other)} "
            f"do not apply to --method {method}"
        )
    return {k: v for k, v in given.items() if v is not None}


def network_options(f):
    """Options of commands that run a trained network."""
    opts = [
        click.option(
            "--checkpoint",
            type=click.Path(exists=True, path_type=Path),
            help="A `vidfeat train` run folder (its best.pt) or a checkpoint in one.",
        ),
        click.option("--batch-size", default=4, show_default=True, help="Videos per forward pass."),
        DEVICE,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@extract.command("flow")
@click.option(
    "--method",
    type=RegistryChoice(_flow_method_names),
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
    "--crop-size",
    type=click.IntRange(min=16),
    help="With --checkpoint: the network's test crop [default: the run's training size].",
)
@run_options
@network_options
@flow_method_options
def extract_flow(
    method: str, short_side: int, bound: float, fields_name: str | None, crop_size, **kw
) -> None:
    """Optical flow on the grid's frame pairs (T x N pairs, never all pairs of a video).

    Without --checkpoint the fields themselves are stored as set `<method>-fields`, uint8
    `(T, N, 2, H, W)`: the input of the flow networks, reusable without recomputing flow.
    With --checkpoint (a `vidfeat train flow` run) the missing fields are computed first, then
    the network's per-segment features `(T, D)` and clip scores go to set `<method>`.

    --method raft runs on --device (default: CUDA when available), --batch-size frame pairs per
    forward pass (default: all of a video's pairs that fit in memory); the OpenCV methods (dis,
    farneback, tvl1) refuse both: each of --workers W processes gets cores/W threads instead.
    """
    from vidfeat.extract.fields import FlowFieldsExtractor, thread_budget_for
    from vidfeat.flow import make_method

    params = _flow_params(method, kw)
    fields_set = fields_name or f"{method}-fields"
    checkpoint, batch_size, device = kw.pop("checkpoint"), kw.pop("batch_size"), kw.pop("device")
    weights = kw.pop("flow_weights")
    if checkpoint is None and crop_size is not None:
        raise click.UsageError(
            "--crop-size applies with --checkpoint (the network's crop); fields are stored whole"
        )
    if checkpoint is None:
        if kw["name"] and fields_name and kw["name"] != fields_name:
            raise click.UsageError(
                f"without --checkpoint the flow fields are the set: --name {kw['name']} and "
                f"--fields-name {fields_name} both name it; give one"
            )
        if kw["float16"]:
            raise click.UsageError(
                "--float16 narrows float features; flow fields are stored as uint8 (with "
                "--checkpoint it narrows the network's features)"
            )
        if kw["engine"] == "ray" and kw["ray_address"] and _given("workers"):
            raise click.UsageError(
                "--workers sizes a local Ray instance; with --ray-address the cluster runs the "
                "tasks: reserve CPUs per task with --ray-num-cpus instead"
            )
        # --device and --batch-size act on a method that runs on a torch device (RAFT) and
        # are refused, with the reason, by a CPU method
        flow = make_method(method, **params).runtime(
            device=device if _given("device") else None,
            batch_size=batch_size if _given("batch_size") else None,
            weights=weights,
        )
        extractor = FlowFieldsExtractor(
            flow,
            segments=kw["segments"],
            frames=kw["frames"],
            short_side=short_side,
            bound=bound,
            threads=thread_budget_for(_run_options(kw)),
        )
        _run(extractor, kw.pop("name") or fields_set, kw)
    from vidfeat.extract.network import extract_flow_features

    _refuse_timeout_in_process(kw)
    set_name = kw.pop("name") or method
    rep = extract_flow_features(
        _videos(kw),
        kw["store_root"],
        method=method,
        params=params,
        fields_set=fields_set,
        set_name=set_name,
        checkpoint=checkpoint,
        segments=kw["segments"],
        short_side=short_side,
        bound=bound,
        batch_size=batch_size,
        device=device,
        opts=_run_options(kw),
        echo=click.echo,
        flow_runtime={"device": device, "weights": weights},  # --batch-size is the network's
        crop_size=crop_size,
        given={
            **{k: v for k, v in (("short_side", short_side), ("bound", bound)) if _given(k)},
            **({"frames": kw["frames"]} if _given("frames") else {}),
            **params,  # only the method options given
        },
    )
    _finish(rep, kw["store_root"], set_name)


@extract.command("rgb")
@run_options
@network_options
@click.option(
    "--crop-size",
    type=click.IntRange(min=16),
    help="Test crop in pixels [default: the run's recorded test crop: the training size for "
    "vidfeat runs, 256 for the authors' StNet].",
)
@click.option(
    "--grid",
    type=click.Choice(["centred", "reference"]),
    default="centred",
    show_default=True,
    help="Test frames: centred runs in floor(t*L/T) segments (every modality's grid), or the "
    "authors' reader (floor(L/T)-frame segments) so an imported authors' network sees "
    "exactly their frames.",
)
def extract_rgb(**kw) -> None:
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
    _refuse_frames("extract rgb", "frames per segment are the network's (its run records N)")
    _refuse_timeout_in_process(kw)
    rep = extract_rgb_features(
        _videos(kw),
        kw["store_root"],
        set_name=kw["name"] or "rgb",
        checkpoint=kw["checkpoint"],
        segments=kw["segments"],
        batch_size=kw["batch_size"],
        device=kw["device"],
        opts=_run_options(kw),
        echo=click.echo,
        crop_size=kw["crop_size"],
        grid="test" if kw["grid"] == "centred" else "reference",
    )
    _finish(rep, kw["store_root"], kw["name"] or "rgb")


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
def extract_audio(pca, embedding, random_init, **kw) -> None:
    """VGGish audio features on the grid: one 0.96 s log-mel example per segment (set `audio`).

    --checkpoint takes VGGish weights (vggish-10086976.pth) or a `vidfeat train audio` run.
    Videos without an audio track store zeros with has_audio=false (not a failure).
    """
    from vidfeat.extract.network import extract_audio_features

    _refuse_frames("extract audio", "audio takes one 0.96 s example per segment")
    _refuse_timeout_in_process(kw)
    rep = extract_audio_features(
        _videos(kw),
        kw["store_root"],
        set_name=kw["name"] or "audio",
        checkpoint=kw["checkpoint"],
        pca=pca,
        embedding=embedding if _given("embedding") else None,  # a run's is its own
        random_init=random_init,
        segments=kw["segments"],
        batch_size=kw["batch_size"],
        device=kw["device"],
        opts=_run_options(kw),
        echo=click.echo,
    )
    _finish(rep, kw["store_root"], kw["name"] or "audio")


@main.command("show")
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
def show(video_id: str, store: str, videos: str | None, video_root: str | None, out: str) -> None:
    """A contact sheet of one video: frames, flow fields, audio, feature norms, clip scores."""
    from vidfeat.show import contact_sheet

    _video_root_applies(video_root, videos)
    res = contact_sheet(store, video_id, out, videos, video_root=video_root)
    click.echo(res.summary())


# --------------------------------------------------------------------------- train


@main.group()
def train() -> None:
    """Train a modality network end to end on labelled videos (run folder in --out)."""


def train_options(f):
    opts = [
        click.option(
            "--videos",
            "train_list",
            required=True,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Training list.",
        ),
        click.option(
            "--val",
            "val_list",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Validation list (Prec@1/5 each epoch; best.pt by val Prec@1).",
        ),
        click.option(
            "--out",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Run folder.",
        ),
        VIDEO_ROOT,
        click.option(
            "--segments",
            "-T",
            default=7,
            show_default=True,
            help="Segments per clip in training (the paper: 7).",
        ),
        click.option(
            "--test-segments", type=int, help="Segments for validation (default: --segments)."
        ),
        click.option("--epochs", default=30, show_default=True),
        click.option("--batch-size", default=8, show_default=True),
        click.option("--lr", default=0.01, show_default=True),
        click.option(
            "--momentum",
            default=0.9,
            show_default=True,
            help="SGD momentum (refused with --optimizer adamw, which has none).",
        ),
        click.option("--weight-decay", default=1e-4, show_default=True),
        click.option(
            "--optimizer",
            type=click.Choice(["sgd", "adamw"]),
            default="sgd",
            show_default=True,
            help="SGD (the paper) or AdamW.",
        ),
        click.option(
            "--schedule",
            type=click.Choice(["step", "cosine"]),
            default="step",
            show_default=True,
            help="step: lr x0.1 at 1/3 and 2/3 of training (the paper); cosine: smooth decay "
            "(better for short runs).",
        ),
        click.option(
            "--no-flip",
            is_flag=True,
            help="No horizontal flips in training (when a mirror changes the class, e.g. "
            "swiping left vs right, or the synthetic dataset's left/right motions).",
        ),
        click.option("--workers", default=2, show_default=True, help="DataLoader workers."),
        DEVICE,
        click.option("--no-amp", is_flag=True, help="No mixed precision on CUDA."),
        SEED,
        click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt."),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Start again in an --out that holds a run (the old one is moved aside to "
            "<out>.replaced-<time>).",
        ),
        QUIET,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def segment_net_options(f):
    opts = [
        click.option(
            "--arch",
            type=RegistryChoice(_segment_net_names),
            default="stnet",
            show_default=True,
            help="Segment network.",
        ),
        click.option(
            "--backbone",
            default="resnet50",
            show_default=True,
            help="timm backbone with ResNet-style stages (resnet18, resnet50, "
            "seresnext50_32x4d, ...).",
        ),
        click.option(
            "--pretrained",
            is_flag=True,
            help="timm pretrained weights (from the local timm/Hugging Face cache).",
        ),
        click.option(
            "--backbone-weights",
            type=click.Path(exists=True, dir_okay=False),
            help="A local 2D state dict for the backbone.",
        ),
        click.option(
            "--frames",
            "-N",
            default=5,
            show_default=True,
            help="Frames per segment (StNet super-image: 3N channels; flow: N pairs).",
        ),
        click.option("--size", default=224, show_default=True, help="Crop size."),
        click.option(
            "--net-opt",
            multiple=True,
            metavar="KEY=VALUE",
            help="Network option, e.g. --net-opt tmb=paper.",
        ),
        click.option(
            "--init",
            type=click.Path(exists=True, path_type=Path),
            help="Fine-tune: start from every weight of this run (trained or imported, e.g. "
            "the authors' StNet) but the classifier, rebuilt for this list's classes. "
            "--arch, --backbone, -N and --net-opt default to the run's.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _check_train(kw: dict) -> None:
    """The refusals of the options every `train` command shares (before any work)."""
    ctx = click.get_current_context()
    _video_root_applies(kw["video_root"], kw["train_list"], kw["val_list"])
    if kw["test_segments"] is not None and kw["val_list"] is None:
        raise click.UsageError(
            "--test-segments sets the segments of validation, and there is none: add --val "
            "LIST, or leave --test-segments out"
        )
    if kw["optimizer"] != "sgd" and (
        ctx.get_parameter_source("momentum") is not click.core.ParameterSource.DEFAULT
    ):
        raise click.UsageError(
            f"--momentum applies to --optimizer sgd; {kw['optimizer']} has no momentum "
            "(its betas are AdamW's defaults)"
        )


def _train(kw: dict, modality: str, **extra) -> None:
    from vidfeat.train import TrainConfig, train

    _check_train(kw)
    cfg = TrainConfig(
        modality=modality,
        train=str(kw["train_list"]),
        val=str(kw["val_list"]) if kw["val_list"] else None,
        segments=kw["segments"],
        test_segments=kw["test_segments"] or kw["segments"],
        epochs=kw["epochs"],
        batch_size=kw["batch_size"],
        lr=kw["lr"],
        momentum=kw["momentum"],
        weight_decay=kw["weight_decay"],
        optimizer=kw["optimizer"],
        schedule=kw["schedule"],
        flip=not kw["no_flip"],
        workers=kw["workers"],
        device=kw["device"],
        amp=not kw["no_amp"],
        seed=kw["seed"],
        video_root=str(kw["video_root"]) if kw["video_root"] else None,
        **extra,
    )
    best = train(
        cfg,
        kw["out"],
        resume=kw["resume"],
        overwrite=kw["overwrite"],
        progress=not kw["quiet"] and sys.stderr.isatty(),
        echo=lambda m: click.echo(m, err=True),
    )
    if "val_prec1" in best:
        click.echo(
            f"train {modality}: best epoch {best['epoch']}, val Prec@1 "
            f"{best['val_prec1']:.4f}, Prec@5 {best['val_prec5']:.4f} -> {kw['out']}"
        )
    else:
        click.echo(f"train {modality}: {best.get('epoch', 0)} epochs -> {kw['out']}")


def _segment_extra(kw: dict) -> dict:
    extra = dict(
        arch=kw["arch"],
        backbone=kw["backbone"],
        pretrained=kw["pretrained"],
        backbone_weights=kw["backbone_weights"],
        frames=kw["frames"],
        size=kw["size"],
        net_options=_parse_head_options(kw["net_opt"], "--net-opt"),
    )
    if kw["init"] is not None:
        extra.update(_from_init_run(kw["init"], extra))
    return extra


def _from_init_run(run: Path, asked: dict) -> dict:
    """With --init: the run's architecture, unless an option asked otherwise (refused, by
    name, when it contradicts the run; options left at their defaults take the run's)."""
    import yaml

    from vidfeat.train import explicit_net_options

    p = run if run.is_dir() else run.parent
    if not (p / "config.yaml").is_file():
        raise click.UsageError(f"--init {run}: not a run folder (no config.yaml)")
    cfg = yaml.safe_load((p / "config.yaml").read_text())
    ctx = click.get_current_context()
    flags = {"arch": "--arch", "backbone": "--backbone", "frames": "-N/--frames"}
    out: dict = {"init": str(run)}
    for key, flag in flags.items():
        given = ctx.get_parameter_source(key) is not click.core.ParameterSource.DEFAULT
        if given and asked[key] != cfg[key]:
            raise click.UsageError(
                f"{flag} {asked[key]} contradicts the --init run's {key} {cfg[key]!r}; leave "
                f"{flag} out (it defaults to the run's)"
            )
        out[key] = cfg[key]
    for key in ("pretrained", "backbone_weights"):
        if asked[key]:
            raise click.UsageError(
                f"--{key.replace('_', '-')} and --init exclude each other: --init brings "
                "every weight of the run"
            )
    run_opts = explicit_net_options(
        cfg["arch"], cfg["modality"], cfg.get("net_options") or {}, True
    )
    for key, value in asked["net_options"].items():
        if run_opts.get(key) != value:
            raise click.UsageError(
                f"--net-opt {key}={value} contradicts the --init run's {key}={run_opts.get(key)!r}"
            )
    out["net_options"] = run_opts
    return out


@train.command("rgb")
@train_options
@segment_net_options
@click.option(
    "--short-side",
    default=256,
    show_default=True,
    help="Frames are resized to this short side before the crop.",
)
def train_rgb(short_side: int, **kw) -> None:
    """StNet (or TSN) on RGB frames decoded on the fly (random offsets, crop + flip)."""
    _train(kw, "rgb", short_side=short_side, **_segment_extra(kw))


@train.command("flow")
@train_options
@segment_net_options
@click.option(
    "--method",
    type=RegistryChoice(_flow_method_names),
    required=True,
    help="Optical flow algorithm of the fields.",
)
@click.option(
    "--store",
    "store_root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Store with (or to receive) the <method>-fields set.",
)
@click.option("--fields-name", help="Set holding the flow fields (default <method>-fields).")
@click.option(
    "--fields-segments",
    default=25,
    show_default=True,
    help="Grid T of newly computed fields (training samples T of them).",
)
@click.option(
    "--short-side", default=256, show_default=True, help="Short side of newly computed fields."
)
@click.option("--bound", default=20.0, show_default=True)
@flow_method_options
def train_flow(method, store_root, fields_name, fields_segments, short_side, bound, **kw) -> None:
    """A flow network on stored flow fields; fields missing from the store are computed first."""
    from vidfeat.extract.fields import fields_extractor_for, prepare_training_fields
    from vidfeat.videolist import load_list

    _check_train(kw)
    net = _segment_extra(kw)  # its refusals (--init, --net-opt) before the fields are computed
    params = _flow_params(method, kw)
    fields_set = fields_name or f"{method}-fields"
    # an existing fields set fixes these: one asked otherwise is refused, naming both values
    # (not -N: the network may read fewer pairs per segment than the set holds)
    given = {k: v for k, v in (("short_side", short_side), ("bound", bound)) if _given(k)}
    ex = fields_extractor_for(
        store_root,
        fields_set,
        method,
        params,
        fields_segments,
        kw["frames"],
        short_side,
        bound,
        # --device reaches a method that runs on a torch device (RAFT); a CPU method drops it
        runtime={"weights": kw.pop("flow_weights"), "device": kw["device"]},
        given={**given, **params},
    )
    if _given("fields_segments") and ex.grid.T != fields_segments:
        raise click.UsageError(
            f"--fields-segments {fields_segments}: set {fields_set!r} holds fields on a "
            f"T={ex.grid.T} grid; leave --fields-segments out to train on them, or pass "
            "--fields-name for a new set"
        )
    lists = [kw["train_list"]] + ([kw["val_list"]] if kw["val_list"] is not None else [])
    prepare_training_fields(
        [load_list(lst, video_root=kw["video_root"]) for lst in lists],
        store_root,
        fields_set,
        ex,
        workers=kw["workers"],
        progress=not kw["quiet"] and sys.stderr.isatty(),
        echo=lambda m: click.echo(m, err=True),
    )
    _train(
        kw,
        "flow",
        store=str(store_root),
        method=method,
        fields_set=fields_set,
        short_side=ex.short_side,
        **net,
    )


@train.command("audio")
@train_options
@click.option(
    "--width",
    default=1.0,
    show_default=True,
    help="VGG width multiplier (1 = VGGish; smaller for CPU budgets).",
)
@click.option(
    "--vggish-weights",
    type=click.Path(exists=True, dir_okay=False),
    help="Initialise from VGGish weights (vggish-10086976.pth).",
)
@click.option(
    "--embedding",
    type=click.Choice(["pre-relu", "post-relu"]),
    default="pre-relu",
    show_default=True,
    help="Embedding point: pre-relu (the original VGGish) or post-relu (the PyTorch port).",
)
def train_audio(width: float, vggish_weights: str | None, embedding: str, **kw) -> None:
    """TSN-style VGG audio network on the grid's log-mel examples (the paper's TSN-VGG).

    Videos without an audio track are left out of training (and counted).
    """
    if kw["no_flip"]:
        raise click.UsageError(
            "train audio takes no --no-flip: log-mel examples are never flipped (flips are "
            "an image augmentation of rgb and flow)"
        )
    _train(
        kw,
        "audio",
        arch="vggish",
        backbone=f"vggish-x{width:g}",
        width=width,
        vggish_weights=vggish_weights,
        net_options={"embedding": embedding},
        frames=1,
        size=96,
        short_side=96,
    )


# --------------------------------------------------------------------------- fuse


@main.group()
def fuse() -> None:
    """Fusion heads (TXN, iTXN, FF-LSTM, Attention Clusters) on stored features."""


def _head_names() -> list[str]:
    from vidfeat.fusion.heads import HEADS

    return HEADS.names()


def _parse_head_options(pairs: tuple[str, ...], flag: str = "--head-opt") -> dict:
    import yaml

    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint=flag)
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


@fuse.command("train")
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--features",
    required=True,
    help="Comma-separated feature sets of the store, e.g. rgb,tvl1,farneback,audio.",
)
@click.option("--head", required=True, type=RegistryChoice(_head_names))
@click.option("--train", "train_list", required=True, type=click.Path(dir_okay=False))
@click.option("--val", "val_list", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option(
    "--optimizer", type=click.Choice(["adamw", "adam"]), default="adamw", show_default=True
)
@click.option(
    "--schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True
)
@click.option("--dropout", type=float, help="Head dropout (head default if not given).")
@click.option(
    "--head-opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Head option, e.g. --head-opt width=256 --head-opt depth=3.",
)
@click.option(
    "--early-stop",
    default=0,
    show_default=True,
    help="Stop after this many epochs without a better val Prec@1 (without --val: a lower "
    "train loss, which also picks best.pt; 0: never).",
)
@click.option("--no-augment", is_flag=True, help="No random temporal subsampling.")
@click.option("--no-cache", is_flag=True, help="Read from HDF5 every epoch.")
@click.option("--workers", default=0, show_default=True, help="DataLoader workers.")
@DEVICE
@SEED
@VIDEO_ROOT
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from last.pt (a larger --epochs may be given).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start again in an --out that holds a run (the old one is moved aside).",
)
@QUIET
def fuse_train(**kw) -> None:
    """Train a fusion head on feature sets of a store; keeps the best epoch by val Prec@1.

    Under torchrun (one process per GPU, or gloo on CPU) --batch-size is the global batch."""
    from vidfeat.fusion.dist import is_main_process
    from vidfeat.fusion.trainer import FuseConfig, train

    _video_root_applies(kw["video_root"], kw["train_list"], kw["val_list"])
    head_options = _parse_head_options(kw["head_opt"])
    if kw["dropout"] is not None:
        if head_options.get("dropout", kw["dropout"]) != kw["dropout"]:
            raise click.UsageError(
                f"--dropout {kw['dropout']} and --head-opt dropout={head_options['dropout']} "
                "set the same option; give one"
            )
        head_options["dropout"] = kw["dropout"]
    cfg = FuseConfig(
        store=kw["store"],
        features=[f.strip() for f in kw["features"].split(",") if f.strip()],
        head=kw["head"],
        train=kw["train_list"],
        val=kw["val_list"],
        head_options=head_options,
        epochs=kw["epochs"],
        batch_size=kw["batch_size"],
        lr=kw["lr"],
        weight_decay=kw["weight_decay"],
        optimizer=kw["optimizer"],
        schedule=kw["schedule"],
        early_stop=kw["early_stop"],
        augment=not kw["no_augment"],
        cache=not kw["no_cache"],
        workers=kw["workers"],
        seed=kw["seed"],
        device=kw["device"],
        video_root=kw["video_root"],
    )
    best = train(
        cfg,
        kw["out"],
        resume=kw["resume"],
        overwrite=kw["overwrite"],
        progress=not kw["quiet"] and sys.stderr.isatty(),
        echo=lambda s: click.echo(s, err=True),
    )
    if not is_main_process():  # one summary per torchrun launch, from rank 0
        return
    if "val_prec1" in best:
        click.echo(
            f"fuse {cfg.head} on {','.join(cfg.features)}: best epoch {best['epoch']}, "
            f"val Prec@1 {best['val_prec1']:.4f}, Prec@5 {best['val_prec5']:.4f} "
            f"-> {kw['out']}"
        )
    else:
        click.echo(f"fuse {cfg.head}: trained {best.get('epoch', 0)} epochs -> {kw['out']}")


@fuse.command("eval")
@click.option("--run", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--videos", required=True, type=click.Path(dir_okay=False))
@click.option("--name", help="Name of the RUN/eval-<name>/ folder (default: the list's name).")
@DEVICE
@VIDEO_ROOT
@click.option(
    "--overwrite", is_flag=True, help="Redo an evaluation of that --name (the old one moved aside)."
)
def fuse_eval(run, store, videos, name, device, video_root, overwrite) -> None:
    """Prec@1, Prec@5, mean class accuracy; per-video scores, per-class CSV, confusion PNG."""
    from vidfeat.fusion.evaluate import evaluate

    _video_root_applies(video_root, videos)
    res = evaluate(
        run, store, videos, device=device, name=name, video_root=video_root, overwrite=overwrite
    )
    for line in res["notes"]:
        click.echo(line, err=True)
    click.echo(
        f"eval: {res['videos']} videos, Prec@1 {res['prec1']:.4f}, Prec@5 "
        f"{res['prec5']:.4f}, mean class acc {res['mean_class_acc']:.4f} -> {res['out']}"
    )


@fuse.command("predict")
@click.option("--run", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--videos", required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@DEVICE
@VIDEO_ROOT
def fuse_predict(run, store, videos, out, device, video_root) -> None:
    """Per-video class scores and top-5 labels for a list (labelled or not)."""
    from vidfeat.fusion.evaluate import predict

    _video_root_applies(video_root, videos)
    n = predict(run, store, videos, out, device=device, video_root=video_root)
    click.echo(f"predict: {n} videos -> {out}")


# --------------------------------------------------------------------------- ensemble


def _members(values: tuple[str, ...]) -> list[str]:
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def _member_options_apply(specs: list[str], store: str | None) -> None:
    """--store serves fusion-run and set: members, --device runs fusion-run members: given
    for members that use neither (score files), they are refused."""
    from vidfeat.fusion.ensemble import member_kind

    if not specs:
        return  # no members known here: the command names the problem
    kinds = {member_kind(m) for m in specs}
    if store is not None and not kinds & {"run", "set", None}:  # None: load_member says why
        raise click.UsageError(
            "--store serves fusion-run and set:NAME members; these members are score files "
            "(they carry their scores): leave --store out"
        )
    if _given("device") and not kinds & {"run", None}:
        raise click.UsageError(
            "--device runs the heads of fusion-run members; these members are score files or "
            "stored scores (nothing runs): leave --device out"
        )


@main.group(invoke_without_command=True)
@click.option(
    "--members",
    multiple=True,
    metavar="MEMBER",
    help="Fusion run folder, set:NAME (stored clip scores) or a scores CSV; repeat "
    "or comma-separate.",
)
@click.option(
    "--store",
    type=click.Path(exists=True, file_okay=False),
    help="Feature store (for runs and set: members).",
)
@click.option(
    "--videos",
    type=click.Path(dir_okay=False),
    help="Labelled held-out list the ensemble is fit and cross-fitted on.",
)
@click.option("--out", type=click.Path(file_okay=False), help="Ensemble folder.")
@click.option("--folds", default=5, show_default=True, help="Stratified cross-fitting folds.")
@click.option("--num-leaves", default=7, show_default=True)
@click.option("--learning-rate", default=0.05, show_default=True)
@click.option("--n-estimators", default=200, show_default=True)
@click.option("--min-child-samples", default=5, show_default=True)
@click.option(
    "--early-stopping",
    default=0,
    show_default=True,
    help="Rounds without improvement on an inner hold-out (0: off).",
)
@click.option(
    "--intersect",
    is_flag=True,
    help="Drop videos some member lacks (reported) instead of refusing.",
)
@SEED
@DEVICE
@VIDEO_ROOT
@click.option(
    "--overwrite",
    is_flag=True,
    help="Fit into an --out that holds other content (moved aside first).",
)
@click.pass_context
def ensemble(
    ctx,
    members,
    store,
    videos,
    out,
    folds,
    num_leaves,
    learning_rate,
    n_estimators,
    min_child_samples,
    early_stopping,
    intersect,
    seed,
    device,
    video_root,
    overwrite,
) -> None:
    """Stack member class scores with a LightGBM GBDT; K-fold cross-fitted evaluation.

    Prints every member's Prec@1/Prec@5, the mean-of-probabilities baseline and the ensemble's
    out-of-fold scores, all on the same videos; writes the models, table (Markdown + CSV),
    out-of-fold scores and a bar chart to --out.
    """
    if ctx.invoked_subcommand is not None:
        before = [
            p.opts[0]
            for p in ctx.command.params
            if ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE
        ]
        if before:
            raise click.UsageError(
                f"{', '.join(before)} given before `{ctx.invoked_subcommand}` fit an ensemble "
                f"and do not apply to `ensemble {ctx.invoked_subcommand}`; its own options go "
                f"after the word {ctx.invoked_subcommand}"
            )
        return
    from vidfeat.fusion.ensemble import GBDTStacker, format_table, run_ensemble
    from vidfeat.videolist import load_list

    for name, val in (("--members", members), ("--videos", videos), ("--out", out)):
        if not val:
            raise click.UsageError(f"{name} is required")
    _video_root_applies(video_root, videos)
    _member_options_apply(_members(members), store)
    est = GBDTStacker(
        num_leaves=num_leaves,
        learning_rate=learning_rate,
        n_estimators=n_estimators,
        min_child_samples=min_child_samples,
        early_stopping=early_stopping,
        seed=seed,
    )
    vl = load_list(videos, video_root=video_root, require_labels=True)
    report = run_ensemble(
        _members(members),
        store,
        vl,
        out,
        est=est,
        folds=folds,
        intersect=intersect,
        device=device,
        overwrite=overwrite,
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(format_table(report.rows))
    click.echo(
        f"ensemble -> {out} (table.md, table.csv, oof_scores.csv, bars.png, model.txt, "
        f"{report.folds} fold models in folds/)"
    )


@ensemble.command("predict")
@click.option("--ensemble", "ens", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--members",
    multiple=True,
    help="Members in the fitted order (default: the ones it was fit on).",
)
@click.option("--store", type=click.Path(exists=True, file_okay=False))
@click.option("--videos", required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@DEVICE
@VIDEO_ROOT
def ensemble_predict(ens, members, store, videos, out, device, video_root) -> None:
    """Score new videos with a fitted ensemble (class scores + top-5 labels, CSV)."""
    from vidfeat.fusion.ensemble import fitted_members, predict_ensemble
    from vidfeat.videolist import load_list

    _video_root_applies(video_root, videos)
    _member_options_apply(_members(members) or fitted_members(ens), store)
    vl = load_list(videos, video_root=video_root)
    report = predict_ensemble(ens, store, vl, out, _members(members) or None, device)
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"ensemble predict: {report.videos} videos -> {out}")


# --------------------------------------------------------------------------- models


@click.group("models")
def models() -> None:
    """Runs as models: import released weights as run folders, describe a run."""


@models.group("import")
def models_import() -> None:
    """Import released weights as a run folder (usable by `extract rgb --checkpoint RUN`)."""


def _paddle_import_options(f):
    opts = [
        click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option(
            "--classes",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Text file: one class name per line, in the order of the weights' classifier.",
        ),
        click.option(
            "--num-classes",
            type=click.IntRange(min=1),
            help="Number of classes, when their names are unknown (checked against the file).",
        ),
        click.option(
            "--out",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Run folder to write.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _paddle_import(file: Path, arch: str, classes, num_classes, out: Path) -> None:
    from vidfeat.models import import_paddle

    rep = import_paddle(file, out, arch=arch, classes=classes, num_classes=num_classes)
    click.echo(rep.summary())


@models_import.command("paddle-stnet")
@_paddle_import_options
def models_import_paddle_stnet(file: Path, classes, num_classes, out: Path) -> None:
    """The authors' PaddlePaddle StNet weights (STNET.pdparams, written by fluid.save).

    The file is read without running anything in it and mapped tensor for tensor (every
    tensor used, every network tensor filled). The run records the authors' test
    preprocessing (short side 256 in a fixed 4:3 frame, centre crop 256, ImageNet mean/std,
    T=25, N=5), which `extract rgb --checkpoint RUN` follows.
    """
    _paddle_import(file, "stnet", classes, num_classes, out)


@models_import.command("paddle-tsn")
@_paddle_import_options
def models_import_paddle_tsn(file: Path, classes, num_classes, out: Path) -> None:
    """The authors' PaddlePaddle TSN weights (TSN.pdparams): ResNet-50, mean consensus.

    Test preprocessing recorded: short side 256 (fixed 4:3 frame), centre crop 224, ImageNet
    mean/std, T=7 (pass -T 7 to `extract rgb`).
    """
    _paddle_import(file, "tsn", classes, num_classes, out)


@models_import.command("timm")
@click.argument("name")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A timm state dict of NAME (default: the local timm / Hugging Face cache).",
)
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, one per line (default: timm's ImageNet names).",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder."
)
def models_import_timm(name: str, weights, classes, out: Path) -> None:
    """A 2D timm ImageNet classifier as a TSN run (offline; nothing is downloaded).

    Its per-segment features are the pooled backbone output and its clip scores the ImageNet
    logits averaged over segments; the run records timm's eval preprocessing.
    """
    from vidfeat.models import import_timm

    click.echo(import_timm(name, out, weights=weights, classes=classes).summary())


@models.command("info")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def models_info(run: Path, as_json: bool) -> None:
    """Architecture, classes, size, preprocessing and origin of a run (trained or imported)."""
    import json

    from vidfeat.models import describe_run, format_description

    info = describe_run(run)
    click.echo(json.dumps(info, indent=1) if as_json else format_description(info))


main.add_command(models)
