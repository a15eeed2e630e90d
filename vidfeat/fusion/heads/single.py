"""The single-modality baseline: masked mean over T → MLP. Gives every fusion result its
single-modality rows."""

from __future__ import annotations

import torch
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.fusion.heads.base import HEADS, FusionHead
from vidfeat.nets.txb import masked_mean


@HEADS.register("single")
class Single(FusionHead):
    options = {"hidden": 512, "dropout": 0.5}

    def __init__(self, dims: dict[str, int], num_classes: int, *, hidden: int, dropout: float):
        super().__init__(dims, num_classes)
        if len(dims) != 1:
            raise ConfigError(
                f"head 'single' takes one feature set, got {', '.join(dims)}; e.g. --features rgb"
            )
        d = next(iter(dims.values()))
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, feats: dict, masks: dict) -> torch.Tensor:
        m = self.modalities[0]
        pooled = masked_mean(feats[m].transpose(1, 2), masks[m])
        return self.mlp(pooled)
