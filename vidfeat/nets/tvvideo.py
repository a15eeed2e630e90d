"""torchvision's video classification networks (``r3d_18``, ``mc3_18``, ``r2plus1d_18``,
``s3d``, ``mvit_v1_b``, ``mvit_v2_s``, ``swin3d_t|s|b``) as clip networks, registered as
``"tvvideo"`` in :data:`~vidfeat.nets.clipnet.CLIP_NETS` (backbone = torchvision's model name).

The wrapper builds torchvision's own model (``torchvision.models.get_model(name,
weights=None, num_classes=K)``) and holds it at ``self.net``, so a torchvision state dict key
``k`` is ``net.k`` here. Nothing is copied from torchvision: the feature path calls its
submodules in the order its ``forward`` does (torchvision 0.29, ``torchvision/models/video``):

- ``r3d_18`` / ``mc3_18`` / ``r2plus1d_18`` (``resnet.py``, ``VideoResNet.forward``: ``stem``,
  ``layer1..4``, ``avgpool`` = ``AdaptiveAvgPool3d(1)``, ``flatten(1)``, ``fc``): the feature is
  the flattened ``avgpool`` output (512), ``classify`` is ``fc``.
- ``s3d`` (``s3d.py``, ``S3D.forward``: ``features``, ``avgpool`` = ``AvgPool3d((2, 7, 7),
  stride=1)`` — not global —, ``classifier`` = Dropout + ``Conv3d(1024, K, 1)``, then the mean
  over (T, H, W) of the logits map): the feature is the mean over (T, H, W) of the ``avgpool``
  map (1024). The 1x1x1 convolution is affine, so the classifier of that mean equals the mean
  of the classifier's map: ``classify(feature)`` is the model's logits.
- ``mvit_v1_b`` / ``mvit_v2_s`` (``mvit.py``, ``MViT.forward``: ``conv_proj``, flatten,
  ``pos_encoding`` (prepends the class token), ``blocks`` with their (T, H, W), ``norm``, token
  0, ``head`` = Dropout + Linear): the feature is the class token after ``norm`` (768).
- ``swin3d_*`` (``swin_transformer.py``, ``SwinTransformer3d.forward``: ``patch_embed``,
  ``pos_drop``, ``features``, ``norm``, channels first, ``avgpool`` = ``AdaptiveAvgPool3d(1)``,
  ``flatten(1)``, ``head``): the feature is the flattened ``avgpool`` output (768 / 1024).

Frames: the CNNs and Swin take any clip length (Swin pads to its patch and window sizes);
the lower bound is the weights' ``meta["min_temporal_size"]`` where torchvision gives one
(``s3d``: 14, its ``AvgPool3d`` needing two time steps; ``swin3d_*``: 1), else 1. MViT does not:
its positional encoding (v1: ``temporal_pos`` / ``spatial_pos`` parameters; v2: relative
position tables) and the (T, H, W) its blocks pool are fixed at build time
(``temporal_size=16``, ``spatial_size=(224, 224)``, the defaults ``_mvit`` takes and the
weights' ``min_temporal_size`` / ``min_size``), so an MViT row is exactly 16 frames of 224².
"""

from __future__ import annotations

import torch
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.nets.clipnet import CLIP_NETS, ClipNet

__all__ = [
    "TV_VIDEO_MODELS",
    "TorchvisionVideoNet",
    "build_torchvision",
    "check_name",
    "classifier_key",
]

# torchvision model name → its family (how its forward runs) ...
TV_VIDEO_MODELS: dict[str, str] = {
    "mc3_18": "resnet",
    "mvit_v1_b": "mvit",
    "mvit_v2_s": "mvit",
    "r2plus1d_18": "resnet",
    "r3d_18": "resnet",
    "s3d": "s3d",
    "swin3d_b": "swin",
    "swin3d_s": "swin",
    "swin3d_t": "swin",
}
# ... and the family's classifier (the module that turns the pooled feature into logits)
CLASSIFIER = {"resnet": "fc", "s3d": "classifier.1", "mvit": "head.1", "swin": "head"}


def check_name(name: str) -> str:
    """``name`` if it is one of torchvision's video networks vidfeat wraps, else a ConfigError
    listing them; returns its family."""
    if name not in TV_VIDEO_MODELS:
        raise ConfigError(
            f"{name!r} is not one of torchvision's video classification networks vidfeat "
            f"imports; choose one of: {', '.join(TV_VIDEO_MODELS)}"
        )
    return TV_VIDEO_MODELS[name]


def build_torchvision(name: str, num_classes: int) -> nn.Module:
    """torchvision's own ``name`` with ``num_classes`` outputs and random weights (nothing is
    downloaded: ``weights=None``)."""
    import torchvision

    check_name(name)
    return torchvision.models.get_model(name, weights=None, num_classes=int(num_classes))


def classifier_key(name: str) -> str:
    """The name of ``name``'s classifier weight in torchvision's state dict (its rows: K)."""
    return f"{CLASSIFIER[check_name(name)]}.weight"


def min_temporal_size(name: str) -> int:
    """The shortest clip torchvision documents for ``name``'s weights (``meta
    ["min_temporal_size"]`` of its DEFAULT entry), 1 where it gives none (the video ResNets)."""
    import torchvision

    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    return int(meta.get("min_temporal_size", 1))


@CLIP_NETS.register("tvvideo")
class TorchvisionVideoNet(ClipNet):
    """A torchvision video classifier applied to every row: ``clip_features`` is its pooled
    feature before the classifier, ``classify`` its own classifier (see the module docstring)."""

    arch = "tvvideo"
    stacks_frames = True

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
        super().__init__(
            backbone,
            num_classes,
            in_chans_per_segment=in_chans_per_segment,
            frames=frames,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
        )
        self.family = check_name(backbone)
        # the 3D CNNs run faster in channels_last_3d; MViT and Swin3D are token models
        self.channels_last = self.family in ("resnet", "s3d")
        self.memory_dims = 3
        if self.chans != 3:
            raise ConfigError(f"torchvision's {backbone} takes RGB clips (3 channels per frame)")
        if num_classes < 1:
            raise ConfigError(f"torchvision's {backbone} has a classifier: pass >= 1 classes")
        self.net = build_torchvision(backbone, num_classes)
        head = self.classifier_module()
        self._feature_dim = int(getattr(head, "in_features", 0) or head.in_channels)
        if self.family == "mvit":
            enc, proj = self.net.pos_encoding, self.net.conv_proj
            self.variable_frames = False
            self.min_frames = enc.temporal_size * proj.stride[0]
            self.input_size = tuple(
                s * p for s, p in zip(enc.spatial_size, proj.stride[1:], strict=True)
            )
            if frames != self.min_frames:
                raise ConfigError(
                    f"torchvision's {backbone} takes clips of exactly {self.min_frames} frames "
                    f"(its positional encoding is built for them), not {frames}"
                )
        else:
            self.min_frames = min_temporal_size(backbone)
            if frames < self.min_frames:
                raise ConfigError(
                    f"torchvision's {backbone} takes clips of >= {self.min_frames} frames "
                    f"(got {frames})"
                )

    @classmethod
    def frame_limits(cls, backbone: str) -> tuple[bool, int]:
        """MViT: exactly its weights' ``min_temporal_size`` (16); the others: at least it."""
        return check_name(backbone) != "mvit", min_temporal_size(backbone)

    @classmethod
    def check_crop(cls, backbone: str, crop: int) -> None:
        """The weights' ``meta["min_size"]``: MViT exactly (its positional encoding), the
        others at least (S3D's 7x7 average pool)."""
        import torchvision

        h, w = torchvision.models.get_model_weights(backbone).DEFAULT.meta.get("min_size", (1, 1))
        if check_name(backbone) == "mvit" and crop != h:
            raise ConfigError(f"torchvision's {backbone} takes crops of exactly {h} px, not {crop}")
        if crop < max(h, w):
            raise ConfigError(
                f"torchvision's {backbone} takes crops of >= {max(h, w)} px, not {crop}"
            )

    def classifier_module(self) -> nn.Module:
        """The torchvision model's classifier: ``fc``, ``classifier[1]``, ``head[1]``, ``head``."""
        return self.net.get_submodule(CLASSIFIER[self.family])

    def clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, W, H, W]`` → ``[N, D]``: the pooled feature the classifier takes."""
        n = self.net
        if self.family == "resnet":
            x = n.stem(x)
            for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
                x = layer(x)
            return n.avgpool(x).flatten(1)
        if self.family == "s3d":
            return n.avgpool(n.features(x)).mean(dim=(2, 3, 4))
        if self.family == "swin":
            x = n.norm(n.features(n.pos_drop(n.patch_embed(x))))
            return n.avgpool(x.permute(0, 4, 1, 2, 3)).flatten(1)
        return self._mvit_features(x)

    def _mvit_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"torchvision's {self.backbone_name} takes frames of exactly "
                f"{self.input_size[0]}x{self.input_size[1]}, got {tuple(x.shape[-2:])}"
            )
        x = n.pos_encoding(n.conv_proj(x).flatten(2).transpose(1, 2))
        thw = (n.pos_encoding.temporal_size, *n.pos_encoding.spatial_size)
        for block in n.blocks:
            x, thw = block(x, thw)
        return n.norm(x)[:, 0]

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` → ``[..., K]``: torchvision's classifier (its dropout is off in eval)."""
        if self.family == "s3d":
            lead = feats.shape[:-1]
            maps = feats.reshape(-1, self._feature_dim, 1, 1, 1)
            return self.net.classifier(maps).reshape(*lead, self.num_classes)
        head = self.net.fc if self.family == "resnet" else self.net.head
        return head(feats)
