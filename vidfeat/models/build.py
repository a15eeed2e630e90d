"""The network of a run: :func:`build_model` from its config, and :func:`load_trained`, the
whole run (config, classes, network with its weights) from its folder or a checkpoint in one.

Imports torch only inside the functions, so importing :mod:`vidfeat.models` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vidfeat.errors import ConfigError
from vidfeat.models.config import TrainConfig, explicit_net_options
from vidfeat.models.folder import resolve_run

if TYPE_CHECKING:
    import torch
    from torch import nn


def in_channels(cfg: TrainConfig) -> int:
    """Input channels per segment: a StNet super-image or a clip network's window of N RGB
    frames (3N), one RGB frame (TSN, a per-frame network), N flow pairs (2N), one log-mel
    example (1)."""
    if cfg.modality == "rgb":
        return 3 * cfg.frames if stacks_frames(cfg.arch) else 3
    if cfg.modality == "flow":
        return 2 * cfg.frames
    return 1


def stacks_frames(arch: str) -> bool:
    """Whether a row of ``arch`` holds N stacked RGB frames (StNet, clip networks) or one."""
    from vidfeat.nets.clipnet import CLIP_NETS, is_clip_arch

    if is_clip_arch(arch):
        return CLIP_NETS.get(arch).stacks_frames
    return arch == "stnet"


def row_frames(cfg: TrainConfig, window: int | None, what: str) -> int:
    """Frames a segment or row of the run's network holds, with ``--window`` ``window``: one
    for RGB networks that read a frame (TSN, per-frame networks); a clip network's window,
    any length its architecture takes (else the clip length its run records); N for StNet and
    the flow networks, whose window can only be N."""
    from vidfeat.nets.clipnet import CLIP_NETS, is_clip_arch

    if cfg.modality == "rgb" and not stacks_frames(cfg.arch):
        own = 1
    else:
        own = int(cfg.frames)
    if window is None or window == own:
        return own
    if is_clip_arch(cfg.arch) and CLIP_NETS.get(cfg.arch).stacks_frames:
        variable, fewest = CLIP_NETS.get(cfg.arch).frame_limits(cfg.backbone)
        if variable and window >= fewest:
            return int(window)
        need = f"at least {fewest}" if variable else f"exactly {own}"
        raise ConfigError(f"--window {window}: {what} ({cfg.backbone}) takes {need} frames a row")
    raise ConfigError(
        f"--window {window}: {what} reads {own} frame(s) per row (its run records N); leave "
        "--window out, or pass the same number (windows of other lengths are for clip networks)"
    )


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The network ``cfg`` describes, with ``num_classes`` outputs (initial weights: random,
    or the backbone / VGGish weights ``cfg`` names)."""
    if cfg.modality == "audio":
        from vidfeat.audio import VGGish, VGGishTSN, load_vggish_weights

        net = VGGish(width=cfg.width, **cfg.net_options)
        if cfg.vggish_weights:
            load_vggish_weights(net, cfg.vggish_weights)
        return VGGishTSN(net, num_classes)
    from vidfeat.nets import create_segment_net
    from vidfeat.nets.clipnet import create_clip_net, is_clip_arch

    create = create_clip_net if is_clip_arch(cfg.arch) else create_segment_net
    return create(
        cfg.arch,
        cfg.backbone,
        num_classes,
        in_chans_per_segment=in_channels(cfg),
        frames=cfg.frames,
        pretrained=cfg.pretrained,
        backbone_weights=cfg.backbone_weights,
        **cfg.net_options,
    )


@dataclass
class LoadedNet:
    path: Path  # the run folder
    config: TrainConfig
    classes: list[str]
    model: nn.Module  # in eval mode
    checkpoint: Path
    sha256: str  # of the checkpoint file


def load_trained(checkpoint: str | Path, device: torch.device | None = None) -> LoadedNet:
    """A run folder (uses its best.pt) or a checkpoint file inside one (``last.pt`` too)."""
    from vidfeat.nets.torchfile import fit_state, load_torch_file
    from vidfeat.provenance import file_sha256
    from vidfeat.videolist import read_classes

    run = resolve_run(checkpoint)
    cfg, ckpt = run.config, run.checkpoint
    classes = read_classes(run.dir / "classes.txt")
    cfg.pretrained, cfg.backbone_weights, cfg.vggish_weights = False, None, None
    cfg.net_options = explicit_net_options(cfg.arch, cfg.modality, cfg.net_options, legacy=True)
    model = build_model(cfg, len(classes))
    state = load_torch_file(ckpt, "checkpoint")  # checked before torch sees it
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a last.pt
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {ckpt}: holds a {type(state).__name__}, not a state dict")
    fit_state(model, state, f"checkpoint {ckpt} does not fit the network of {run.config_path}")
    model.eval()
    if device is not None:
        model.to(device)
    sha = file_sha256(ckpt)
    return LoadedNet(run.dir, cfg, classes, model, ckpt, sha)
