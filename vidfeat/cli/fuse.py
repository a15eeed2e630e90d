"""``vidfeat fuse train|eval|predict``: fusion heads on stored features.

``train``'s options are generated from the fields of ``FuseConfig``; it hands the config to
:func:`vidfeat.fusion.trainer.train`. ``eval`` and ``predict`` call
:mod:`vidfeat.fusion.evaluate`.
"""

from __future__ import annotations

from typing import Any

import click

from vidfeat.cli.base import Group
from vidfeat.cli.options import (
    DEVICE,
    PRECISION,
    QUIET,
    VIDEO_ROOT,
    config_values,
    dataclass_options,
    parse_key_values,
    progress_enabled,
    video_root_applies,
)


@click.group(cls=Group)
def fuse() -> None:
    """Fusion heads (TXN, iTXN, FF-LSTM, Attention Clusters) on stored features."""


def _fuse_config() -> type:
    from vidfeat.fusion.config import FuseConfig

    return FuseConfig


@fuse.command("train")
@dataclass_options(_fuse_config)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--dropout", type=float, help="Head dropout (head default if not given).")
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
def fuse_train(**kw: Any) -> None:
    """Train a fusion head on feature sets of a store; keeps the best epoch by val Prec@1.

    Under torchrun (one process per GPU, or gloo on CPU) --batch-size is the global batch."""
    from vidfeat.fusion.config import FuseConfig
    from vidfeat.fusion.dist import is_main_process
    from vidfeat.fusion.trainer import train

    video_root_applies(kw["video_root"], kw["train_list"], kw["val_list"])
    head_options = parse_key_values(kw["head_opt"], "--head-opt")
    if kw["dropout"] is not None:
        if head_options.get("dropout", kw["dropout"]) != kw["dropout"]:
            raise click.UsageError(
                f"--dropout {kw['dropout']} and --head-opt dropout={head_options['dropout']} "
                "set the same option; give one"
            )
        head_options["dropout"] = kw["dropout"]
    values = config_values(FuseConfig, kw)
    values["features"] = [f.strip() for f in kw["features"].split(",") if f.strip()]
    values["head_options"] = head_options
    cfg = FuseConfig(**values)
    best = train(
        cfg,
        kw["out"],
        resume=kw["resume"],
        overwrite=kw["overwrite"],
        progress=progress_enabled(kw["quiet"]),
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
@PRECISION
@VIDEO_ROOT
@click.option(
    "--overwrite", is_flag=True, help="Redo an evaluation of that --name (the old one moved aside)."
)
def fuse_eval(
    run: str,
    store: str,
    videos: str,
    name: str | None,
    device: str,
    precision: str,
    video_root: str | None,
    overwrite: bool,
) -> None:
    """Prec@1, Prec@5, mean class accuracy; per-video scores, per-class CSV, confusion PNG."""
    from vidfeat.fusion.evaluate import evaluate

    video_root_applies(video_root, videos)
    res = evaluate(
        run,
        store,
        videos,
        device=device,
        name=name,
        video_root=video_root,
        overwrite=overwrite,
        precision=precision,
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
@PRECISION
@VIDEO_ROOT
def fuse_predict(
    run: str,
    store: str,
    videos: str,
    out: str,
    device: str,
    precision: str,
    video_root: str | None,
) -> None:
    """Per-video class scores and top-5 labels for a list (labelled or not)."""
    from vidfeat.fusion.evaluate import predict

    video_root_applies(video_root, videos)
    n = predict(run, store, videos, out, device=device, video_root=video_root, precision=precision)
    click.echo(f"predict: {n} videos -> {out}")
