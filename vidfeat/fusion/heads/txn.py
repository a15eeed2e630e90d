"""TXN: a temporal Xception block over one modality or the concatenation of several.

``fusion="early"`` (the default; the paper's TXN): one TXB on the concatenated modalities.
``fusion="late"``: one TXB per modality, their max-pooled vectors concatenated — iTXN without
its early branch, so the TXN-vs-iTXN comparison can be read both ways (a choice, MODELS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.fusion.heads.base import HEADS, FusionHead, key
from vidfeat.nets.txb import TemporalXceptionBlock, masked_max


@HEADS.register("txn")
class TXN(FusionHead):
    """(T, ΣD) → TXB → masked max over T → dropout → Linear → K (early fusion), or one TXB per
    modality → masked max each → concatenation → dropout → Linear → K (late fusion)."""

    options = {"width": 1024, "dropout": 0.5, "fusion": "early"}

    def __init__(
        self, dims: dict[str, int], num_classes: int, *, width: int, dropout: float, fusion: str
    ):
        super().__init__(dims, num_classes)
        if fusion not in ("early", "late"):
            raise ConfigError(f"--head-opt fusion={fusion}: choose early or late")
        self.fusion = fusion
        if fusion == "early":
            self.txb = TemporalXceptionBlock(sum(dims.values()), width)
        else:
            self.late = nn.ModuleDict(
                {key(m): TemporalXceptionBlock(d, width) for m, d in dims.items()}
            )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width * (1 if fusion == "early" else len(dims)), num_classes)

    def forward(self, feats: dict, masks: dict) -> torch.Tensor:
        if self.fusion == "early":
            x, mask = self.concat(feats, masks)
            return self.fc(self.drop(masked_max(self.txb(x.transpose(1, 2), mask), mask)))
        vecs = []
        for m in self.modalities:
            mm = masks[m]
            xm = feats[m] * mm.unsqueeze(-1).to(feats[m].dtype)
            vecs.append(masked_max(self.late[key(m)](xm.transpose(1, 2), mm), mm))
        return self.fc(self.drop(torch.cat(vecs, dim=1)))
