"""iTXN: early fusion (one TXB on the concatenation) + late fusion (one TXB per modality).

A modality missing for a video contributes zeros to the early input and a zero late vector
(its mask row is all zero, so its masked max is zero) — MODELS.md marks this a choice.
"""

from __future__ import annotations

import torch
from torch import nn

from vidfeat.fusion.heads.base import HEADS, FusionHead, key
from vidfeat.nets.txb import TemporalXceptionBlock, masked_max


@HEADS.register("itxn")
class ITXN(FusionHead):
    options = {"width": 1024, "dropout": 0.5}

    def __init__(self, dims: dict[str, int], num_classes: int, *, width: int, dropout: float):
        super().__init__(dims, num_classes)
        self.early = TemporalXceptionBlock(sum(dims.values()), width)
        self.late = nn.ModuleDict(
            {key(m): TemporalXceptionBlock(d, width) for m, d in dims.items()}
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width * (1 + len(dims)), num_classes)

    def forward(self, feats: dict, masks: dict) -> torch.Tensor:
        x, mask = self.concat(feats, masks)
        vecs = [masked_max(self.early(x.transpose(1, 2), mask), mask)]
        for m in self.modalities:
            mm = masks[m]
            xm = feats[m] * mm.unsqueeze(-1).to(feats[m].dtype)
            vecs.append(masked_max(self.late[key(m)](xm.transpose(1, 2), mm), mm))
        return self.fc(self.drop(torch.cat(vecs, dim=1)))
