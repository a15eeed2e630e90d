"""Two-stream I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?", 2017): the
Inception-v1 network inflated to 3D, imported whole from the two PyTorch weight formats people
hold (:func:`vidfeat.models.import_i3d` maps them), as a :class:`~vidfeat.nets.clipnet.ClipNet`.

One network, :class:`InceptionI3d` (arch ``"i3d"``), serves both formats; its keyword-only
option ``convention`` selects the source whose arithmetic it reproduces, operation for
operation, where the two differ:

``"pytorch-i3d"`` (piergiaj/pytorch-i3d, ``pytorch_i3d.py``)
    BatchNorm eps 0.001 (``Unit3D.__init__``, l. 80). Every convolution and max pool pads
    "same"-style *per input* (``Unit3D.compute_pad`` / ``forward``, l. 82-112;
    ``MaxPool3dSamePadding``, l. 13-45): along a dimension of size ``s``, kernel ``k``, stride
    ``st``, the total padding is ``max(k - st, 0)`` when ``st`` divides ``s``, else
    ``max(k - s % st, 0)``; the front gets ``total // 2``, the back the rest; zeros, then the
    convolution (padding 0) or ``max_pool3d`` (``ceil_mode`` False). This is TensorFlow's SAME.
``"video_features"`` (v-iashin/video_features, ``models/i3d/i3d_src/i3d_net.py``)
    BatchNorm eps 1e-5, PyTorch's default (``Unit3Dpy``, l. 91-92; the TF weights were trained
    with 0.001, the port uses 1e-5 and so does this convention). Padding is fixed when the
    network is built, ``max(k - st, 0)`` split front ``// 2`` / back the rest whatever the input
    size (``get_padding_shape``, l. 8-25); a convolution whose six pads are equal passes them to
    the convolution itself, otherwise zeros are padded first (l. 52-78, 97-100). Max pools always
    zero-pad first, then ``max_pool3d`` with ``ceil_mode=True`` (``MaxPool3dTFPadding``,
    l. 108-120). ``get_padding_shape`` hands the height pads to the width and back; every I3D
    kernel and stride is square in space, so that changes nothing.

Both end alike (``InceptionI3d.forward`` / ``extract_features`` l. 322-338 there;
``I3D.forward`` l. 238-274 here): Mixed_5c (1024 channels), ``avg_pool3d`` kernel (2, 7, 7)
stride 1 (no padding), then the 1x1x1 logits convolution with bias (``logits`` /
``conv3d_0c_1x1``; dropout is off at test). video_features' feature is that pooled map averaged
over time (1024-d; at 224 px its space is 1x1), its logits the convolution's output averaged over
time; pytorch-i3d returns the pooled map and the per-time logits. vidfeat's feature of a window
is the pooled map averaged over its time *and* space (identical where the sources define one
vector: 224-px crops), and :meth:`InceptionI3d.classify` the logits convolution applied to it —
the convolution is affine, so that equals the sources' logits averaged over time (and space).

Small inputs: a 224-px crop leaves 7x7 at Mixed_5c. For smaller crops (tests; 112 px leaves
4x4) the pooling kernel is clipped to the map, ``(min(2, t), min(7, h), min(7, w))``, where
the sources would fail; from 224 px on it is exactly theirs. :attr:`InceptionI3d.min_frames` is
10, the shortest window that leaves 2 time steps at Mixed_5c under both conventions, so the
temporal pooling is always the sources' own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.nets.clipnet import CLIP_NETS, ClipNet

__all__ = ["CONVENTIONS", "INCEPTION_BLOCKS", "InceptionI3d", "describe", "same_pad"]

CONVENTIONS = ("pytorch-i3d", "video_features")
BN_EPS = {"pytorch-i3d": 1e-3, "video_features": 1e-5}

# Mixed block → (input channels, [b0, b1a, b1b, b2a, b2b, b3b] output channels); the max pool
# before a block, when there is one: (kernel, stride) in (t, h, w)
INCEPTION_BLOCKS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
POOL_BEFORE = {
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),  # MaxPool3d_3a_3x3
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),  # MaxPool3d_4a_3x3
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),  # MaxPool3d_5a_2x2
}
FEATURE_DIM = 1024
FINAL_POOL = (2, 7, 7)


def same_pad(
    sizes: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], convention: str
) -> tuple[int, ...]:
    """The zero padding of a (t, h, w) input in ``F.pad`` order ``(w0, w1, h0, h1, t0, t1)``:
    pytorch-i3d's rule from the input's sizes, video_features' fixed one (see the module)."""
    pads: list[int] = []
    for s, k, st in zip(reversed(sizes), reversed(kernel), reversed(stride), strict=True):
        if convention == "pytorch-i3d" and s % st:
            total = max(k - s % st, 0)
        else:
            total = max(k - st, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """Convolution (no bias) → BatchNorm → ReLU, padded by the convention's rule."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        convention: str,
    ) -> None:
        super().__init__()
        self.convention = convention
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS[convention], momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = same_pad(tuple(x.shape[2:]), self.kernel, self.stride, self.convention)
        w = self.conv3d.weight
        if self.convention == "video_features" and len(set(pad)) == 1:
            # video_features hands equal pads to the convolution itself (simplify_padding)
            x = F.conv3d(x, w, None, self.stride, pad[0])
        else:
            x = F.conv3d(F.pad(x, pad) if any(pad) else x, w, None, self.stride)
        return F.relu(self.bn(x))


def max_pool(x: torch.Tensor, kernel: tuple, stride: tuple, convention: str) -> torch.Tensor:
    """The sources' "same" max pool: zeros padded first, then pytorch-i3d floors the output
    size and video_features ceils it."""
    pad = same_pad(tuple(x.shape[2:]), kernel, stride, convention)
    if any(pad):  # both pad with zeros (a zero pad is the identity)
        x = F.pad(x, pad)
    return F.max_pool3d(x, kernel, stride, ceil_mode=convention == "video_features")


class Inception(nn.Module):
    """A Mixed block: four branches (1x1; 1x1 → 3x3; 1x1 → 3x3; max pool 3x3 → 1x1),
    concatenated on the channels."""

    def __init__(self, cin: int, outs: tuple[int, ...], *, convention: str) -> None:
        super().__init__()
        self.convention = convention
        one, three = (1, 1, 1), (3, 3, 3)
        self.b0 = Unit3D(cin, outs[0], one, convention=convention)
        self.b1a = Unit3D(cin, outs[1], one, convention=convention)
        self.b1b = Unit3D(outs[1], outs[2], three, convention=convention)
        self.b2a = Unit3D(cin, outs[3], one, convention=convention)
        self.b2b = Unit3D(outs[3], outs[4], three, convention=convention)
        self.b3b = Unit3D(cin, outs[5], one, convention=convention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = max_pool(x, (3, 3, 3), (1, 1, 1), self.convention)
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(b3)], dim=1
        )


class Unit3DLogits(nn.Module):
    """The 1x1x1 logits convolution with bias (``logits.conv3d``), applied to pooled
    features as the affine map it is."""

    def __init__(self, cin: int, k: int) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(cin, k, (1, 1, 1), bias=True)

    def linear(self, feats: torch.Tensor) -> torch.Tensor:
        w = self.conv3d.weight
        return F.linear(feats, w.reshape(w.shape[0], w.shape[1]), self.conv3d.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the sources' per-position logits
        return self.conv3d(x)


@CLIP_NETS.register("i3d")
class InceptionI3d(ClipNet):
    """I3D on ``[B, T, C·W, H, W]`` (C = 3 RGB in [-1, 1], 2 flow /20): the feature of a row
    is Mixed_5c average-pooled (2, 7, 7) / 1 and averaged over what remains (1024-d), its
    logits the 1x1x1 logits convolution of that feature. Module names follow pytorch-i3d's
    (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_5c.b3b.bn.running_var``,
    ``logits.conv3d.bias``)."""

    arch = "i3d"
    stacks_frames = True
    variable_frames = True
    min_frames = 10  # 2 time steps at Mixed_5c under both conventions
    channels_last, memory_dims = True, 3  # faster in channels_last_3d (see ClipNet)

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        in_chans_per_segment: int,
        frames: int,
        pretrained: bool = False,
        backbone_weights: str | None = None,
        convention: str = "pytorch-i3d",
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            in_chans_per_segment=in_chans_per_segment,
            frames=frames,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
        )
        if convention not in CONVENTIONS:
            raise ConfigError(
                f"i3d convention must be one of {', '.join(CONVENTIONS)} (got {convention!r})"
            )
        self.convention = convention
        self.config.update(convention=convention)
        conv = dict(convention=convention)
        self.Conv3d_1a_7x7 = Unit3D(self.chans, 64, (7, 7, 7), (2, 2, 2), **conv)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, (1, 1, 1), **conv)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), **conv)
        for name, (cin, outs) in INCEPTION_BLOCKS.items():
            self.add_module(name, Inception(cin, outs, **conv))
        self.logits: Unit3DLogits | None = (
            Unit3DLogits(FEATURE_DIM, self.num_classes) if self.num_classes else None
        )
        self._feature_dim = FEATURE_DIM

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, W, H, W]`` → the Mixed_5c map ``[N, 1024, t, h, w]``."""
        c = self.convention
        x = self.Conv3d_1a_7x7(x)
        x = max_pool(x, (1, 3, 3), (1, 2, 2), c)  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        for name in INCEPTION_BLOCKS:
            if name in POOL_BEFORE:
                x = max_pool(x, *POOL_BEFORE[name], c)
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def final_pool(x: torch.Tensor) -> torch.Tensor:
        """The sources' ``avg_pool3d`` (2, 7, 7) stride 1, its kernel clipped to the map."""
        kernel = tuple(min(k, s) for k, s in zip(FINAL_POOL, x.shape[2:], strict=True))
        return F.avg_pool3d(x, kernel, stride=1)

    def pooled_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, W, H, W]`` → the pooled map ``[N, 1024, t', h', w']`` both sources
        return before averaging (pytorch-i3d's ``extract_features``)."""
        if x.dim() != 5 or x.shape[1] != self.chans:
            raise ValueError(f"i3d expects [N, {self.chans}, W, H, W], got {tuple(x.shape)}")
        return self.final_pool(self.mixed_5c(x))

    def clip_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled_map(x).mean(dim=(2, 3, 4))

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            raise ConfigError("this i3d has no classifier (num_classes 0)")
        return self.logits.linear(feats)


def describe(net: InceptionI3d) -> dict[str, Any]:
    """What a run records of the network: its convention and feature path."""
    return {
        "convention": net.convention,
        "bn_eps": BN_EPS[net.convention],
        "feature": "Mixed_5c, avg_pool3d (2,7,7)/1 (kernel clipped to the map), mean over t,h,w",
        "logits": "1x1x1 logits conv on the pooled map, mean over t (== conv of the feature)",
    }
