"""Attention Clusters: per modality one cluster of K attention units with the shifting
operation; clusters concatenated → dropout → Linear.

Unit k: scores ``s_t = W x_t + b`` (one Linear D→K shared over time), a masked softmax over
time, ``g_k = Σ_t a_{k,t} x_t``, then ``v_k = (α_k g_k + β_k) / (√K · ‖α_k g_k + β_k‖₂)`` with
learnable scalars α_k, β_k ~ N(0, √(1/√K)). Order-free in time by construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vidfeat.fusion.heads.base import HEADS, FusionHead, key


class Cluster(nn.Module):
    def __init__(self, dim: int, units: int) -> None:
        super().__init__()
        self.units = units
        self.score = nn.Linear(dim, units)
        std = math.sqrt(1.0 / math.sqrt(units))
        self.alpha = nn.Parameter(torch.randn(units) * std)
        self.beta = nn.Parameter(torch.randn(units) * std)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, D], ``mask`` [B, T] → [B, K·D]."""
        valid = mask.bool()
        s = self.score(x).masked_fill(~valid.unsqueeze(-1), float("-inf"))  # [B, T, K]
        any_valid = valid.any(dim=1)  # [B]
        # a video without this modality: uniform weights over zeros, then zeroed below
        s = torch.where(any_valid[:, None, None], s, torch.zeros_like(s))
        a = torch.softmax(s, dim=1)
        g = torch.einsum("btk,btd->bkd", a, x)
        v = self.alpha[None, :, None] * g + self.beta[None, :, None]
        v = v / (math.sqrt(self.units) * v.norm(dim=2, keepdim=True).clamp_min(1e-6))
        v = v * any_valid[:, None, None].to(v.dtype)
        return v.flatten(1)


@HEADS.register("attention-clusters")
class AttentionClusters(FusionHead):
    options = {"clusters": 32, "dropout": 0.5}

    def __init__(
        self, dims: dict[str, int], num_classes: int, *, clusters: int, dropout: float
    ) -> None:
        super().__init__(dims, num_classes)
        self.clusters = nn.ModuleDict({key(m): Cluster(d, clusters) for m, d in dims.items()})
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(clusters * sum(dims.values()), num_classes)

    def forward(self, feats: dict, masks: dict) -> torch.Tensor:
        vecs = [self.clusters[key(m)](feats[m], masks[m]) for m in self.modalities]
        return self.fc(self.drop(torch.cat(vecs, dim=1)))
