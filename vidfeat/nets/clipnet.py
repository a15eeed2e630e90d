"""Networks imported whole: clip networks (I3D, torchvision's video networks) and per-frame
image networks (any timm model, CLIP's image tower), under the segment networks' contract.

Contract (the same as :mod:`vidfeat.nets.segment`, what extraction and the store rely on)::

    x      [B, T, C·W, H, W]    T rows; a row holds its W frames stacked frame-major (frame j's
                                C channels at C·j .. C·j + C - 1), exactly like StNet's
                                super-images; C = 3 for RGB, 2 for flow (x, y of each pair).
                                A per-frame network (W = 1) takes [B, T, 3, H, W].
    net.forward_features(x)     → [B, T, D]  the feature of every row (what the store keeps)
    net.forward_head(f, mask)   → [B, K]     the mean over the valid rows of each row's logits
    net(x)                      → [B, K]     forward_head(forward_features(x)); with T = 1 the
                                             network's own logits of the window
    net.feature_dim = D, net.num_classes = K (0: no classifier, e.g. CLIP; no forward_head)
    net.config                  → dict; ``create_clip_net(**net.config)`` rebuilds it

Every family's head is linear in the pooled feature (a Linear or a 1x1x1 convolution after the
global average, with any remaining mean over time taken before or after it), so a row's logits
from its stored feature equal the network's own logits of that window.

A subclass sets ``arch``, ``stacks_frames`` (True: a row is a clip of W frames; False: one
frame) and ``variable_frames`` (the network takes any W >= ``min_frames``, so ``--window``
chooses W), and implements :meth:`ClipNet.clip_features` and :meth:`ClipNet.classify`.
The subclasses register themselves in :data:`CLIP_NETS`; :func:`create_clip_net` builds one.
"""

from __future__ import annotations

from typing import Any

import torch

from vidfeat.errors import ConfigError
from vidfeat.nets.rownet import RowNet
from vidfeat.nets.txb import masked_mean
from vidfeat.registry import Registry

__all__ = ["CLIP_NETS", "ClipNet", "create_clip_net"]


class ClipNet(RowNet):
    """A network imported whole, applied to every row of ``[B, T, C·W, H, W]``."""

    arch: str = ""
    stacks_frames: bool = True  # a row is W frames (clip network) or one frame (per-frame)
    variable_frames: bool = True  # any W >= min_frames (fully convolutional in time)
    min_frames: int = 1
    # the memory format the family runs faster in (vidfeat.precision): channels_last, and
    # channels_last_3d for 3D convolutions (memory_dims 3: I3D x1.5 fp32 / x1.8 bf16 on the CPU,
    # r2plus1d_18 x1.1 / x1.3, measured side by side)
    channels_last: bool = False
    memory_dims: int = 2

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        in_chans_per_segment: int,
        frames: int,
        pretrained: bool = False,
        backbone_weights: str | None = None,
    ) -> None:
        super().__init__()
        if pretrained or backbone_weights:
            raise ConfigError(
                f"{self.arch} networks take their weights from `vidfeat models import`, not from "
                "--pretrained / --backbone-weights"
            )
        if num_classes < 0:
            raise ConfigError(f"the network needs >= 0 classes (got {num_classes})")
        if frames < 1:
            raise ConfigError(f"frames must be >= 1 (got {frames})")
        chans = in_chans_per_segment // frames if self.stacks_frames else in_chans_per_segment
        if chans * (frames if self.stacks_frames else 1) != in_chans_per_segment or chans not in (
            2,
            3,
        ):
            raise ConfigError(
                f"{self.arch} takes 3 (RGB) or 2 (flow) channels per frame; got "
                f"{in_chans_per_segment} channels for {frames} frame(s)"
            )
        self.backbone_name = backbone
        self.num_classes = int(num_classes)
        self.frames = int(frames)
        self.in_chans = int(in_chans_per_segment)
        self.chans = int(chans)  # C: 3 RGB, 2 flow
        self.modality = "rgb" if chans == 3 else "flow"
        self.config: dict[str, Any] = dict(
            arch=self.arch,
            backbone=backbone,
            num_classes=int(num_classes),
            in_chans_per_segment=int(in_chans_per_segment),
            frames=int(frames),
        )
        self._feature_dim = 0  # set by the subclass

    # -- what a subclass implements
    def clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, W, H, W]`` (a clip network) or ``[N, C, H, W]`` (per frame) → ``[N, D]``."""
        raise NotImplementedError

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` → ``[..., K]``: the network's classifier on pooled features."""
        raise NotImplementedError

    @classmethod
    def frame_limits(cls, backbone: str) -> tuple[bool, int]:
        """Whether ``backbone``'s rows take any number of frames, and the fewest they take
        (before the network is built: what ``--window`` is checked against)."""
        return cls.variable_frames, cls.min_frames

    @classmethod
    def check_crop(cls, backbone: str, crop: int) -> None:
        """Refuse (ConfigError) a crop ``backbone`` cannot take, before any work."""

    # -- the shared forward
    def rows_as_clips(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C·W, H, W]`` → ``[B·T, C, W, H, W]`` (per frame: ``[B·T, C, H, W]``)."""
        if x.dim() != 5 or x.shape[2] % self.chans:
            raise ValueError(
                f"{self.arch} expects [B, T, {self.chans}·W, H, W], got {tuple(x.shape)}"
            )
        b, t, cw, h, w = x.shape
        if not self.stacks_frames:
            if cw != self.chans:
                raise ValueError(f"{self.arch} takes one frame per row: [B, T, {self.chans}, H, W]")
            return x.reshape(b * t, cw, h, w)
        frames = cw // self.chans
        if frames < self.min_frames or (not self.variable_frames and frames != self.frames):
            need = f">= {self.min_frames}" if self.variable_frames else f"{self.frames}"
            raise ValueError(
                f"{self.arch} {self.backbone_name} takes {need} frames per row, got {frames}"
            )
        return x.reshape(b * t, frames, self.chans, h, w).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C·W, H, W]`` → ``[B, T, D]``."""
        b, t = x.shape[:2]
        return self.clip_features(self.rows_as_clips(x)).reshape(b, t, -1)

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, D]`` (+ mask ``[B, T]``) → ``[B, K]``: the mean of the rows' logits."""
        if self.num_classes == 0:
            raise ConfigError(f"{self.arch} {self.backbone_name} has no classifier (features only)")
        return masked_mean(self.classify(feats).transpose(1, 2), mask)


CLIP_NETS: Registry[type[ClipNet]] = Registry("imported network")


def create_clip_net(
    arch: str,
    backbone: str,
    num_classes: int,
    *,
    in_chans_per_segment: int,
    frames: int,
    pretrained: bool = False,
    backbone_weights: str | None = None,
    **options: Any,
) -> ClipNet:
    """Build a registered imported network (random weights; a run's state dict fills them)."""
    _register_families()
    cls = CLIP_NETS.get(arch)
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


def is_clip_arch(arch: str) -> bool:
    """True for the architectures of :data:`CLIP_NETS` (imported whole, not trainable here)."""
    _register_families()
    return arch in CLIP_NETS


_FAMILIES = ("vidfeat.nets.i3d", "vidfeat.nets.tvvideo", "vidfeat.nets.framenet")


def _register_families() -> None:
    """Import the family modules (each registers its class in :data:`CLIP_NETS`)."""
    import importlib

    for mod in _FAMILIES:
        importlib.import_module(mod)
