"""TXN: a temporal Xception block over one modality or the concatenation of several."""

from __future__ import annotations

import torch
from torch import nn

from fusion.heads.base import HEADS, FusionHead
from vidfeat.nets.txb import TemporalXceptionBlock, masked_max


@HEADS.register("txn")
class TXN(FusionHead):
    """(T, ΣD) → TXB → masked max over T → dropout → Linear → K (early fusion only)."""

    options = {"width": 1024, "dropout": 0.5}

    def __init__(self, dims: dict[str, int], num_classes: int, *, width: int, dropout: float):
        super().__init__(dims, num_classes)
        self.txb = TemporalXceptionBlock(sum(dims.values()), width)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feats: dict, masks: dict) -> torch.Tensor:
        x, mask = self.concat(feats, masks)
        y = self.txb(x.transpose(1, 2), mask)
        return self.fc(self.drop(masked_max(y, mask)))
