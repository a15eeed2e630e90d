"""The fusion-head base class, the registry and ``create_head`` (the heads import this)."""

from __future__ import annotations

import torch
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.registry import Registry

HEADS: Registry[type] = Registry("fusion head")


class FusionHead(nn.Module):
    """Base class: keeps the modality order and offers the early-fusion concatenation."""

    options: dict = {}

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        if not dims:
            raise ConfigError("a fusion head needs at least one feature set (--features)")
        self.modalities = list(dims)
        self.dims = dict(dims)
        self.num_classes = int(num_classes)

    @classmethod
    def default_options(cls) -> dict:
        return dict(cls.options)

    def concat(self, feats: dict, masks: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Early fusion: ``[B, T, ΣD]`` with missing/padded steps zeroed, and the time mask
        ``[B, T]`` of steps valid in any modality."""
        xs = [feats[m] * masks[m].unsqueeze(-1).to(feats[m].dtype) for m in self.modalities]
        mask = torch.stack([masks[m] for m in self.modalities]).amax(0)
        return torch.cat(xs, dim=-1), mask


def key(m: str) -> str:
    """A modality name usable as an nn.ModuleDict key."""
    return m.replace(".", "_")


def create_head(name: str, dims: dict[str, int], num_classes: int, **options) -> FusionHead:
    cls = HEADS.get(name)
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        known = ", ".join(f"{k}={v}" for k, v in cls.options.items())
        raise ConfigError(f"head {name!r} has no option {', '.join(unknown)}; options: {known}")
    return cls(dims, num_classes, **{**cls.options, **options})
