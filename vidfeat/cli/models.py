"""``vidfeat models``: released weights imported as run folders (``import paddle-stnet``,
``import paddle-tsn``, ``import timm``, ``import i3d``, ``import torchvision``) and a run
described (``info``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vidfeat.cli.base import Group
from vidfeat.cli.options import apply


@click.group("models", cls=Group)
def models() -> None:
    """Runs as models: import released weights as run folders, describe a run."""


@models.group("import")
def models_import() -> None:
    """Import released weights as a run folder (usable by `extract rgb --checkpoint RUN`)."""


def _paddle_import_options(f: Any) -> Any:
    return apply(
        f,
        [
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
        ],
    )


def _paddle_import(
    file: Path, arch: str, classes: Path | None, num_classes: int | None, out: Path
) -> None:
    from vidfeat.models import import_paddle

    rep = import_paddle(file, out, arch=arch, classes=classes, num_classes=num_classes)
    click.echo(rep.summary())


@models_import.command("paddle-stnet")
@_paddle_import_options
def models_import_paddle_stnet(
    file: Path, classes: Path | None, num_classes: int | None, out: Path
) -> None:
    """The authors' PaddlePaddle StNet weights (STNET.pdparams, written by fluid.save).

    The file is read without running anything in it and mapped tensor for tensor (every
    tensor used, every network tensor filled). The run records the authors' test
    preprocessing (short side 256 in a fixed 4:3 frame, centre crop 256, ImageNet mean/std,
    T=25, N=5), which `extract rgb --checkpoint RUN` follows.
    """
    _paddle_import(file, "stnet", classes, num_classes, out)


@models_import.command("paddle-tsn")
@_paddle_import_options
def models_import_paddle_tsn(
    file: Path, classes: Path | None, num_classes: int | None, out: Path
) -> None:
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
    help="NAME's timm state dict (.pth/.bin/.safetensors), or for timm's ViT CLIP towers an "
    "OpenAI / open_clip CLIP state dict (default: the local timm / Hugging Face cache).",
)
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, one per line (default: timm's ImageNet names).",
)
@click.option(
    "--normalize",
    is_flag=True,
    help="Store the features L2-normalised (CLIP towers and other models without classifier).",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder."
)
def models_import_timm(
    name: str, weights: Path | None, classes: Path | None, normalize: bool, out: Path
) -> None:
    """Any timm image model as a run of per-frame features (offline; nothing is downloaded).

    ViTs, ConvNeXt, EfficientNet, RegNet, CLIP's image towers, ...: one frame per row, the
    feature of each frame is the model's pooled pre-logits vector and the clip scores its logits
    averaged over the rows. ResNet-family classifiers become TSN runs (trainable with `train
    --init`). A CLIP tower (e.g. vit_base_patch16_clip_224.openai) has no classifier: its
    feature is the image embedding after CLIP's projection. The run records timm's eval
    preprocessing of NAME (resize, crop, interpolation, mean/std).
    """
    from vidfeat.models import import_timm

    rep = import_timm(name, out, weights=weights, classes=classes, normalize=normalize)
    click.echo(rep.summary())
    for note in rep.notes:
        click.echo(f"note: {note}")


@models_import.command("i3d")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--modality",
    required=True,
    type=click.Choice(["rgb", "flow"]),
    help="The stream the file holds (checked: conv1 takes 3 channels for rgb, 2 for flow).",
)
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, one per line in the logits' order (default: numbered names).",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder."
)
def models_import_i3d(file: Path, modality: str, classes: Path | None, out: Path) -> None:
    """I3D weights: pytorch-i3d's (rgb_imagenet.pt, flow_imagenet.pt) or video_features'
    (i3d_rgb.pt, i3d_flow.pt) state dicts, told apart by their names.

    Mapped tensor for tensor (every tensor used, every network tensor filled); the run
    reproduces the source's padding, BatchNorm eps and pooling (net option `convention`).
    Features: Mixed_5c average-pooled, 1024-d per window (default 64 frames); preprocessing
    recorded: short side 256, centre crop 224, RGB scaled to [-1, 1]; flow fields of
    `extract flow --bound 20`.
    """
    from vidfeat.models import import_i3d

    click.echo(import_i3d(file, out, modality=modality, classes=classes).summary())


@models_import.command("torchvision")
@click.argument("name")
@click.option(
    "--weights",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="torchvision's own weights file of NAME (e.g. r3d_18-b3b3357e.pth); nothing is "
    "downloaded.",
)
@click.option(
    "--classes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, one per line (default: the weights' Kinetics-400 names).",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder."
)
def models_import_torchvision(name: str, weights: Path, classes: Path | None, out: Path) -> None:
    """A torchvision video classifier (r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v1_b, mvit_v2_s,
    swin3d_t, swin3d_s, swin3d_b) from its weights file, as a clip-network run.

    Its per-row features are the pooled vector before its classifier and its scores its own
    logits; the run records torchvision's preprocessing of those weights (resize, crop,
    mean/std, clip length), read from torchvision's weights metadata.
    """
    from vidfeat.models import import_torchvision

    click.echo(import_torchvision(name, out, weights=weights, classes=classes).summary())


@models.command("info")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def models_info(run: Path, as_json: bool) -> None:
    """Architecture, classes, size, preprocessing and origin of a run (trained or imported)."""
    import json

    from vidfeat.models import describe_run, format_description

    info = describe_run(run)
    click.echo(json.dumps(info, indent=1) if as_json else format_description(info))
