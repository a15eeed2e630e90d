"""Segment networks: StNet and TSN on a timm 2D backbone (MODELS.md, "StNet" and "TSN").

Read top to bottom: the temporal modelling block → the common :class:`SegmentNet` → StNet →
TSN → the registry and :func:`create_segment_net`.

Contract (what the trainer, the extractor and the store rely on)::

    x      [B, T, C_in, H, W]   C_in = 3N (StNet RGB super-image, frame-major: channel 3j + c),
                                3 (TSN RGB), 2N (flow: N stacked x/y pairs, interleaved)
    net.forward_features(x)     → [B, T, D]  per-segment features (what the store keeps)
    net.forward_head(f, mask)   → [B, K]     class logits (mask [B, T] bool, True = valid)
    net(x)                      → [B, K]     forward_head(forward_features(x))
    net.feature_dim = D, net.num_classes = K
    net.config                  → dict; ``create_segment_net(**net.config)`` rebuilds the
                                  architecture (random init) for ``load_state_dict``

T is folded into the batch for the backbone (``[B·T, C_in, H, W]``), so any T works at test
time (StNet trains with T=7 and tests with T=25) and nothing loops over T in Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.nets.backbones import (
    WeightsReport,
    conv1_inflate,
    count_parameters,
    create_backbone,
    family_of,
    inflate_first_conv,
)
from vidfeat.nets.rownet import RowNet
from vidfeat.nets.txb import TemporalXceptionBlock, masked_max, masked_mean
from vidfeat.registry import Registry

__all__ = [
    "SEGMENT_NETS",
    "SegmentNet",
    "StNet",
    "TSN",
    "TemporalModelingBlock",
    "WeightsReport",
    "conv1_inflate",
    "count_parameters",
    "create_segment_net",
]


TMB_MODES = ("paper", "residual")
FEATURE_POINTS = ("res5", "txb")
CONV1_INITS = {"i3d": "rgb-i3d", "mean": "rgb-mean"}


# --------------------------------------------------------------------------- building blocks


class TemporalModelingBlock(nn.Module):
    """StNet's TMB: a (3,1,1) temporal conv C→C + BN + ReLU across the segments of one clip.

    Input and output ``[B·T, C, H, W]`` (segments of a clip adjacent, T given at call time).

    - ``mode="residual"`` (default; the authors' released code and weights):
      ``x + BN(ReLU(Conv3d(x)))``, He init.
    - ``mode="paper"``: ``ReLU(BN(Conv3d(x)))``; conv weights all ``1/(3C)``, bias 0, BN
      identity — at init every output channel is the ReLU of the mean over the 3 temporal
      neighbours (zero padded) and all channels, so all channels are equal; from scratch it did
      not train in the demo's budget.

    The Conv3d with kernel (3,1,1), padding (1,0,0) over ``[B, C, T, H, W]`` is computed as the
    identical Conv2d with kernel (3,1), padding (1,0) over ``[B, C, T, H·W]`` (same weights
    ``C·C·3`` + bias, same BN statistics): torch refuses ``model.to(memory_format=
    torch.channels_last)`` on 5-D weights, and for channels_last input both reshapes are views.
    """

    def __init__(self, channels: int, mode: str = "residual") -> None:
        super().__init__()
        if mode not in TMB_MODES:
            raise ConfigError(f"--net-opt tmb={mode}: choose one of {', '.join(TMB_MODES)}")
        self.mode = mode
        self.conv = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=True)
        self.bn = nn.BatchNorm2d(channels)
        self.output_dim = channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.mode == "paper":
            nn.init.constant_(self.conv.weight, 1.0 / (3 * self.conv.in_channels))
        else:
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)
        self.bn.reset_parameters()  # γ=1, β=0, running mean 0 / var 1

    def forward(self, x: torch.Tensor, segments: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        if bt % segments:
            raise ValueError(f"batch {bt} is not a multiple of T={segments}")
        b = bt // segments
        y = x.view(b, segments, c, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, segments, h * w)
        if self.mode == "residual":
            y = y + self.bn(F.relu(self.conv(y)))
        else:
            y = F.relu(self.bn(self.conv(y)))
        return y.view(b, c, segments, h, w).permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)


# --------------------------------------------------------------------------- common model


class SegmentNet(RowNet):
    """A timm 2D backbone applied to every segment of a clip, plus a clip-level head.

    Subclasses define the temporal blocks (``self.tmb``, keyed by the stage they follow), the
    head, and their options as keyword-only ``__init__`` parameters with defaults (these are
    what ``--net-opt KEY=VALUE`` may set).
    """

    arch: str = ""
    # faster in channels_last on CPU and CUDA, in fp32 and bf16 (bench/bench_precision.py)
    channels_last = True

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        in_chans_per_segment: int,
        frames: int,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"the network needs >= 1 class (got {num_classes})")
        if frames < 1:
            raise ConfigError(f"--frames must be >= 1 (got {frames})")
        self.modality = self.modality_of(in_chans_per_segment, frames)
        self.backbone, report = create_backbone(
            backbone, pretrained=pretrained, backbone_weights=backbone_weights
        )
        self.weights_report: WeightsReport | None = report
        self.family = family_of(self.backbone)
        self.backbone_dim = int(self.backbone.num_features)  # C5
        self.in_chans = in_chans_per_segment
        self.frames = frames
        self.num_classes = num_classes
        self.tmb = nn.ModuleDict()
        self.config: dict[str, Any] = dict(
            arch=self.arch,
            backbone=backbone,
            num_classes=num_classes,
            in_chans_per_segment=in_chans_per_segment,
            frames=frames,
        )
        # How the weights were initialised; not part of `config` (a rebuild loads a checkpoint).
        self.init_info = dict(pretrained=pretrained, backbone_weights=backbone_weights)

    # -- subclass hooks
    def modality_of(self, in_chans: int, frames: int) -> str:
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    # -- shared forward
    def segment_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone (with any temporal blocks) + global average pool: ``[B, T, C_in, H, W]`` →
        ``[B, T, C5]``."""
        if x.dim() != 5 or x.shape[2] != self.in_chans:
            raise ValueError(
                f"{self.arch} expects [B, T, {self.in_chans}, H, W], got {tuple(x.shape)}"
            )
        b, t = x.shape[:2]
        x = x.flatten(0, 1)  # fold T into the batch: the backbone sees B·T images
        for name in self.family.stages:
            x = getattr(self.backbone, name)(x)
            if name in self.tmb:
                x = self.tmb[name](x, t)
        return x.mean((2, 3)).view(b, t, -1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C_in, H, W]`` → per-segment features ``[B, T, feature_dim]``."""
        return self.segment_features(x)


def _check_choice(flag: str, value: object, choices) -> None:
    if value not in choices:
        raise ConfigError(f"--net-opt {flag}={value}: choose one of {', '.join(choices)}")


# --------------------------------------------------------------------------- StNet


class StNet(SegmentNet):
    """StNet (He et al., AAAI 2019): super-image backbone + TMBs + TXB head.

    ``[B, T, 3N|2N, H, W]`` → backbone (conv1 inflated to the stacked frames; a TMB after each of
    the family's two middle stages, e.g. Res3/Res4) → average pool ``[B, T, C5]`` → TXB
    ``[B, txb_width, T]`` → max over T → Linear → ``[B, K]``.

    Options (``--net-opt``):
      tmb="residual"        TMB form: "residual" x + BN(ReLU(conv(x) + b)), He init (the
                            authors' released code and weights; it trains from scratch) or
                            "paper" ReLU(BN(conv)) with every weight 1/(3C): every output
                            channel is equal at initialisation, and it did not train from
                            scratch in the demo's budget
      feature_point="res5"  what forward_features returns: "res5" = pooled backbone ``[B,T,C5]``,
                            "txb" = TXB output ``[B, T, txb_width]`` (a choice, MODELS.md)
      txb_width=1024        TXB output channels
      conv1_init="i3d"      RGB conv1 inflation: "i3d" (W/N per frame) or "mean" (authors'
                            code: colour-averaged W/N tiled); flow always uses cross-modality
    """

    arch = "stnet"

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        in_chans_per_segment: int,
        frames: int,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        tmb: str = "residual",
        feature_point: str = "res5",
        txb_width: int = 1024,
        conv1_init: str = "i3d",
    ) -> None:
        _check_choice("tmb", tmb, TMB_MODES)
        _check_choice("feature_point", feature_point, FEATURE_POINTS)
        _check_choice("conv1_init", conv1_init, tuple(CONV1_INITS))
        if not isinstance(txb_width, int) or txb_width < 1:
            raise ConfigError(f"--net-opt txb_width must be an integer >= 1 (got {txb_width!r})")
        super().__init__(
            backbone,
            num_classes,
            in_chans_per_segment=in_chans_per_segment,
            frames=frames,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
        )
        # After any weight loading: the 2D kernel is what gets inflated.
        mode = "flow-cross-modality" if self.modality == "flow" else CONV1_INITS[conv1_init]
        inflate_first_conv(self.backbone, in_chans_per_segment, frames, mode)
        for stage in self.family.tmb_after:
            self.tmb[stage] = TemporalModelingBlock(_stage_channels(self.backbone, stage), tmb)
        self.txb = TemporalXceptionBlock(self.backbone_dim, txb_width, init="authors")
        self.fc = nn.Linear(txb_width, num_classes)
        self.feature_point = feature_point
        self._feature_dim = txb_width if feature_point == "txb" else self.backbone_dim
        self.config.update(
            tmb=tmb, feature_point=feature_point, txb_width=txb_width, conv1_init=conv1_init
        )

    def modality_of(self, in_chans: int, frames: int) -> str:
        if in_chans == 3 * frames:
            return "rgb"
        if in_chans == 2 * frames:
            return "flow"
        raise ConfigError(
            f"StNet with --frames {frames} takes {3 * frames} channels per segment (RGB "
            f"super-image of {frames} frames) or {2 * frames} (flow: {frames} x/y pairs); "
            f"got {in_chans}"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C_in, H, W]`` → ``[B, T, C5]`` (res5) or ``[B, T, txb_width]`` (txb)."""
        f = self.segment_features(x)
        if self.feature_point == "txb":
            f = self.txb(f.transpose(1, 2)).transpose(1, 2)
        return f

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, feature_dim]`` (+ mask ``[B, T]``) → logits ``[B, K]``."""
        x = feats.transpose(1, 2)  # [B, D, T]
        if self.feature_point == "res5":
            x = self.txb(x, mask)
        return self.fc(masked_max(x, mask))


def _stage_channels(backbone: nn.Module, stage: str) -> int:
    """Output channels of a stage, read from the model's feature_info (no forward pass)."""
    for info in backbone.feature_info:
        if info["module"] == stage:
            return int(info["num_chs"])
    raise ConfigError(f"cannot find stage {stage!r} in {type(backbone).__name__}.feature_info")


# --------------------------------------------------------------------------- TSN


class TSN(SegmentNet):
    """Temporal Segment Network: one 2D backbone per segment, per-segment logits, mean over T.

    ``[B, T, 3|2N, H, W]`` → backbone → average pool ``[B, T, C5]`` (forward_features) →
    dropout → Linear → ``[B, T, K]`` → mean over valid T → ``[B, K]``. RGB input is the plain 2D
    backbone; flow input (N stacked x/y pairs) gets the cross-modality conv1.

    Options (``--net-opt``):
      dropout=0.5   before the classifier (a choice: TSN's published RGB setting is 0.8 and
                    flow 0.7 for BN-Inception; 0.5 is a middle ground for ResNets)
    """

    arch = "tsn"

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        in_chans_per_segment: int,
        frames: int,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        dropout: float = 0.5,
    ) -> None:
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"--net-opt dropout must be in [0, 1) (got {dropout!r})")
        super().__init__(
            backbone,
            num_classes,
            in_chans_per_segment=in_chans_per_segment,
            frames=frames,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
        )
        if self.modality == "flow":
            inflate_first_conv(self.backbone, in_chans_per_segment, frames, "flow-cross-modality")
        self.drop = nn.Dropout(float(dropout))
        self.fc = nn.Linear(self.backbone_dim, num_classes)
        self._feature_dim = self.backbone_dim
        self.config.update(dropout=float(dropout))

    def modality_of(self, in_chans: int, frames: int) -> str:
        if in_chans == 3:
            return "rgb"
        if in_chans == 2 * frames:
            return "flow"
        raise ConfigError(
            f"TSN takes 3 channels per segment (one RGB frame) or {2 * frames} (flow: --frames "
            f"{frames} x/y pairs); got {in_chans}"
        )

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, C5]`` (+ mask ``[B, T]``) → segmental consensus logits ``[B, K]``."""
        logits = self.fc(self.drop(feats))  # [B, T, K]
        return masked_mean(logits.transpose(1, 2), mask)  # segmental consensus


# --------------------------------------------------------------------------- registry + builder

SEGMENT_NETS: Registry[type[SegmentNet]] = Registry("segment network")
SEGMENT_NETS.register("stnet")(StNet)
SEGMENT_NETS.register("tsn")(TSN)


def create_segment_net(
    arch: str,
    backbone: str,
    num_classes: int,
    *,
    in_chans_per_segment: int,
    frames: int,
    pretrained: bool = False,
    backbone_weights: str | None = None,
    **options: Any,
) -> SegmentNet:
    """Build a registered segment network (``stnet``, ``tsn``) on a timm backbone.

    ``pretrained`` loads the backbone's timm ImageNet weights from the local timm / Hugging
    Face cache (downloading only when online); ``backbone_weights`` loads a local 2D state dict
    instead. Either happens before conv1 is inflated. ``options`` are the architecture's
    ``--net-opt`` settings (see :meth:`SegmentNet.option_defaults`); unknown ones raise
    :class:`ConfigError`. ``create_segment_net(**net.config)`` rebuilds a network.
    """
    cls = SEGMENT_NETS.get(arch)
    cls.check_options(options)
    return cls(
        backbone,
        num_classes,
        in_chans_per_segment=in_chans_per_segment,
        frames=frames,
        pretrained=pretrained,
        backbone_weights=backbone_weights,
        **options,
    )
