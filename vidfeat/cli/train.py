"""``vidfeat train rgb|flow|audio``: a modality network trained end to end on videos.

The options of ``TrainConfig`` are generated from its fields (groups ``train``, ``net`` and
``audio``); every command hands a ``TrainConfig`` to :func:`vidfeat.train.train`. ``train
flow`` first fills the flow fields it trains on (``flow_training_fields``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vidfeat.cli.base import Group
from vidfeat.cli.options import (
    QUIET,
    RegistryChoice,
    apply,
    config_values,
    dataclass_options,
    flow_method_names,
    flow_method_options,
    flow_params,
    given,
    parse_key_values,
    progress_enabled,
    video_root_applies,
)


@click.group(cls=Group)
def train() -> None:
    """Train a modality network end to end on labelled videos (run folder in --out)."""


def _train_config() -> type:
    from vidfeat.models import TrainConfig

    return TrainConfig


def train_options(f: Any) -> Any:
    """The options every `train` command shares: ``TrainConfig``'s ``train`` fields and the
    run folder."""
    return apply(
        f,
        [
            dataclass_options(_train_config, "train"),
            click.option(
                "--out",
                required=True,
                type=click.Path(file_okay=False, path_type=Path),
                help="Run folder.",
            ),
            click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt."),
            click.option(
                "--overwrite",
                is_flag=True,
                help="Start again in an --out that holds a run (the old one is moved aside to "
                "<out>.replaced-<time>).",
            ),
            QUIET,
        ],
    )


def check_train(kw: dict[str, Any]) -> None:
    """The refusals of the options every `train` command shares (before any work)."""
    video_root_applies(kw["video_root"], kw["train_list"], kw["val_list"])
    if kw["test_segments"] is not None and kw["val_list"] is None:
        raise click.UsageError(
            "--test-segments sets the segments of validation, and there is none: add --val "
            "LIST, or leave --test-segments out"
        )
    if kw["optimizer"] != "sgd" and given("momentum"):
        raise click.UsageError(
            f"--momentum applies to --optimizer sgd; {kw['optimizer']} has no momentum "
            "(its betas are AdamW's defaults)"
        )


def run_training(kw: dict[str, Any], modality: str, **extra: Any) -> None:
    """Train the ``TrainConfig`` of the parsed options ``kw`` (and ``extra`` fields); print
    the best epoch."""
    from vidfeat.models import TrainConfig
    from vidfeat.train import train as train_run

    check_train(kw)
    values = config_values(TrainConfig, kw, "train")
    values["test_segments"] = kw["test_segments"] or kw["segments"]
    cfg = TrainConfig(modality=modality, **{**values, **extra})
    best = train_run(
        cfg,
        kw["out"],
        resume=kw["resume"],
        overwrite=kw["overwrite"],
        progress=progress_enabled(kw["quiet"]),
        echo=lambda m: click.echo(m, err=True),
    )
    if "val_prec1" in best:
        click.echo(
            f"train {modality}: best epoch {best['epoch']}, val Prec@1 "
            f"{best['val_prec1']:.4f}, Prec@5 {best['val_prec5']:.4f} -> {kw['out']}"
        )
    else:
        click.echo(f"train {modality}: {best.get('epoch', 0)} epochs -> {kw['out']}")


# --------------------------------------------------------------------------- segment networks


def segment_extra(kw: dict[str, Any]) -> dict[str, Any]:
    """The segment network's ``TrainConfig`` fields (``net``), the --init run's where it
    fixes them."""
    from vidfeat.models import TrainConfig

    extra = config_values(TrainConfig, kw, "net")
    extra["net_options"] = parse_key_values(kw["net_opt"], "--net-opt")
    if kw["init"] is not None:
        from vidfeat.models import init_options

        given_net = {k for k in ("arch", "backbone", "frames") if given(k)}
        extra.update(init_options(Path(kw["init"]), extra, given_net))
    return extra


@train.command("rgb")
@train_options
@dataclass_options(_train_config, "net")
@click.option(
    "--short-side",
    default=256,
    show_default=True,
    help="Frames are resized to this short side before the crop.",
)
def train_rgb(short_side: int, **kw: Any) -> None:
    """StNet (or TSN) on RGB frames decoded on the fly (random offsets, crop + flip)."""
    run_training(kw, "rgb", short_side=short_side, **segment_extra(kw))


@train.command("flow")
@train_options
@dataclass_options(_train_config, "net")
@click.option(
    "--method",
    type=RegistryChoice(flow_method_names),
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
def train_flow(method: str, store_root: Path, fields_name: str | None, **kw: Any) -> None:
    """A flow network on stored flow fields; fields missing from the store are computed first."""
    from vidfeat.extract.fields import flow_training_fields
    from vidfeat.videolist import load_list

    check_train(kw)
    net = segment_extra(kw)  # its refusals (--init, --net-opt) before the fields are computed
    params = flow_params(method, kw)
    fields_set = fields_name or f"{method}-fields"
    lists = [kw["train_list"]] + ([kw["val_list"]] if kw["val_list"] is not None else [])
    ex = flow_training_fields(
        [load_list(lst, video_root=kw["video_root"]) for lst in lists],
        store_root,
        fields_set,
        method,
        params,
        segments=kw["fields_segments"],
        frames=kw["frames"],
        short_side=kw["short_side"],
        bound=kw["bound"],
        # --device reaches a method that runs on a torch device (RAFT); a CPU method drops it
        runtime={"weights": kw["flow_weights"], "device": kw["device"]},
        # an existing fields set fixes these: one asked otherwise is refused, naming both
        # values (not -N: the network may read fewer pairs per segment than the set holds)
        given={**{k: kw[k] for k in ("short_side", "bound") if given(k)}, **params},
        segments_given=given("fields_segments"),
        workers=kw["workers"],
        progress=progress_enabled(kw["quiet"]),
        echo=lambda m: click.echo(m, err=True),
    )
    run_training(
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
@dataclass_options(_train_config, "audio")
@click.option(
    "--embedding",
    type=click.Choice(["pre-relu", "post-relu"]),
    default="pre-relu",
    show_default=True,
    help="Embedding point: pre-relu (the original VGGish) or post-relu (the PyTorch port).",
)
def train_audio(embedding: str, **kw: Any) -> None:
    """TSN-style VGG audio network on the grid's log-mel examples (the paper's TSN-VGG).

    Videos without an audio track are left out of training (and counted).
    """
    from vidfeat.models import TrainConfig

    if kw["no_flip"]:
        raise click.UsageError(
            "train audio takes no --no-flip: log-mel examples are never flipped (flips are "
            "an image augmentation of rgb and flow)"
        )
    audio = config_values(TrainConfig, kw, "audio")
    run_training(
        kw,
        "audio",
        arch="vggish",
        backbone=f"vggish-x{audio['width']:g}",
        net_options={"embedding": embedding},
        frames=1,
        size=96,
        short_side=96,
        **audio,
    )
