"""Segment networks (StNet, TSN on timm backbones), the networks imported whole (clip networks
and per-frame image networks) and the temporal layers shared with the fusion heads.

    backbones  timm backbones split into stages, conv1 inflation for 3N / 2N input channels
    segment    StNet and TSN, the ``SEGMENT_NETS`` registry, ``create_segment_net``
    txb        the temporal Xception block (StNet's head and the TXN fusion heads)
    paddle     the authors' PaddlePaddle ``.pdparams`` files: a restricted reader and the strict
               mapping of their names onto StNet and TSN
    rownet     the contract every network of rows keeps (``RowNet``: options, forward, widths)
    clipnet    the contract of the networks imported whole (rows ``[B, T, C·W, H, W]`` →
               ``[B, T, D]``), the ``CLIP_NETS`` registry, ``create_clip_net``
    i3d        two-stream I3D (Inception-v1 inflated), the ``"i3d"`` clip network, with the
               padding / BatchNorm / pooling conventions of pytorch-i3d and video_features
    framenet   any timm image model on every frame (``FrameNet``, arch ``frame``): ViTs,
               ConvNeXt, EfficientNet, CLIP's image towers, ...
    torchfile  every ``.pt`` / ``.pth`` file vidfeat reads: checked (a regular file, its zip or
               legacy structure, its pickles' opcodes) before ``torch.load`` sees it
    tvvideo    torchvision's video classifiers (r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v1_b,
               mvit_v2_s, swin3d_t|s|b) as the ``tvvideo`` clip network: the pooled feature
               before their own classifier

The segment-network names are imported lazily, so ``vidfeat.nets.txb`` (used by the fusion
heads) does not pull in timm.
"""

from __future__ import annotations

_LAZY = {"SEGMENT_NETS", "SegmentNet", "create_segment_net", "conv1_inflate", "count_parameters"}


def __getattr__(name: str):
    if name in _LAZY:
        from vidfeat.nets import segment

        return getattr(segment, name)
    raise AttributeError(f"module 'vidfeat.nets' has no attribute {name!r}")
