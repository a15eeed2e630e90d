"""Per-frame image networks: any timm image model (ViTs, ConvNeXt, EfficientNet, RegNet, CLIP's
image towers, ...) applied to every frame, no stage split (the ``frame`` architecture).

The timm model sits whole at ``self.net`` (state-dict keys ``net.<timm key>``), built by
``timm.create_model(backbone, pretrained=False, num_classes=...)``. Its head is one of:

- a classifier (``num_classes = K > 0``): the feature is the pooled pre-logits vector,
  ``net.forward_head(net.forward_features(x), pre_logits=True)`` — what timm's ``num_classes=0``
  model returns — and the logits are ``net.get_classifier()`` applied to it;
- a projection (``embed_dim = E > 0``, then ``num_classes = 0``): CLIP's image towers, whose timm
  head is CLIP's projection (timm's ``_convert_openai_clip`` maps ``visual.proj`` to
  ``head.weight`` with a zero bias); the feature is the model's whole output, the image
  embedding open_clip's ``encode_image`` gives on the same input tensor; no classifier;
- nothing (both 0): the pooled output of a headless model (DINOv2, SigLIP's image tower, ...).

``normalize=True`` stores a classifier-less run's feature L2-normalised (CLIP's cosine space).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.nets.clipnet import CLIP_NETS, ClipNet

__all__ = ["FrameNet"]


@CLIP_NETS.register("frame")
class FrameNet(ClipNet):
    """A timm image model on every frame of ``[B, T, 3, H, W]``: ``[B, T, D]`` features, the
    mean over T of the frames' logits."""

    arch = "frame"
    stacks_frames = False
    variable_frames = False
    min_frames = 1

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        in_chans_per_segment: int,
        frames: int,
        pretrained: bool = False,
        backbone_weights: str | None = None,
        embed_dim: int = 0,
        normalize: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            in_chans_per_segment=in_chans_per_segment,
            frames=frames,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
        )
        if frames != 1 or self.chans != 3:
            raise ConfigError(
                f"frame networks take one RGB frame per row (frames 1, 3 channels); got "
                f"frames {frames}, {in_chans_per_segment} channels"
            )
        embed_dim = int(embed_dim)
        if embed_dim < 0:
            raise ConfigError(f"embed_dim must be >= 0 (got {embed_dim})")
        if embed_dim and num_classes:
            raise ConfigError(
                f"{backbone}: a head that is a projection (embed_dim {embed_dim}) is no "
                f"classifier; the run takes 0 classes, not {num_classes}"
            )
        if normalize and num_classes:
            raise ConfigError(
                f"normalize applies to features-only runs; {backbone} has a {num_classes}-class "
                "classifier, whose logits need the features as they are"
            )
        import timm

        if not timm.is_model(backbone.split(".")[0]):
            raise ConfigError(
                f"{backbone!r} is not a timm model; list candidates with "
                "`python -c \"import timm; print(timm.list_models('vit_*'))\"`"
            )
        self.net: nn.Module = timm.create_model(
            backbone, pretrained=False, num_classes=embed_dim or int(num_classes)
        )
        self.embed_dim = embed_dim
        self.normalize = bool(normalize)
        self.config.update(embed_dim=embed_dim, normalize=self.normalize)
        # token models (ViT, Swin, ...) gain nothing from the 2D channels_last format
        self.channels_last = not hasattr(self.net, "patch_embed")
        self._feature_dim = embed_dim or int(self.net.num_features)
        if not embed_dim:  # pooled pre-logits width (ConvNeXt-MLP, ... widen it)
            self._feature_dim = int(getattr(self.net, "head_hidden_size", 0) or self._feature_dim)

    def clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` → ``[N, D]``: pooled pre-logits (classifier, headless) or the
        projected embedding (``embed_dim``), L2-normalised with ``normalize``."""
        f = self.net.forward_features(x)
        f = (
            self.net.forward_head(f)
            if self.embed_dim
            else self.net.forward_head(f, pre_logits=True)
        )
        f = f.flatten(1)
        return F.normalize(f, dim=-1) if self.normalize else f

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` → ``[..., K]``: timm's classifier (a Linear, or a 1x1 convolution used as
        one) on the pooled features."""
        if self.num_classes == 0:
            raise ConfigError(f"frame {self.backbone_name} has no classifier (features only)")
        head = self.net.get_classifier()
        if isinstance(head, nn.Linear):
            return head(feats)
        if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.groups == 1:
            return F.linear(feats, head.weight.flatten(1), head.bias)
        raise ConfigError(
            f"timm {self.backbone_name}'s classifier is a {type(head).__name__}, not a linear "
            "layer on the pooled feature; vidfeat cannot score its frames from stored features"
        )
