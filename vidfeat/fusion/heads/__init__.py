"""Fusion heads: one file each, one registry.

Contract (the one interface between the store and every head)::

    head = create_head(name, dims={"rgb": 512, "audio": 128}, num_classes=K, **options)
    logits = head(feats, masks)   # feats[m]: [B, T, D_m] float, masks[m]: [B, T] (1 = valid)

All modalities share T (the segment grid). A modality missing for a video has inputs of zeros
and an all-zero mask row; every head then ignores it (never NaN). Each head class lists its
options with defaults in ``default_options()``; the trainer saves them with the run.

Layout: ``base`` holds :class:`FusionHead`, the ``HEADS`` registry and :func:`create_head`;
one file per head registers itself there: ``txn`` (temporal Xception, early or late fusion),
``itxn`` (early + per-modality late fusion), ``fflstm`` (Fast-Forward LSTM),
``attention_clusters`` (Attention Clusters with shifting), ``single`` (one modality, the
baseline). May import torch and vidfeat's shared temporal
layers (``vidfeat.nets.txb``); never the trainer or the CLI.
"""

from vidfeat.fusion.heads import attention_clusters, fflstm, itxn, single, txn  # noqa: F401 (register)
from vidfeat.fusion.heads.base import HEADS, FusionHead, create_head, key

__all__ = ["HEADS", "FusionHead", "create_head", "key"]
