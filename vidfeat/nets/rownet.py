"""The contract every network of rows keeps, the segment networks (:mod:`vidfeat.nets.segment`)
and the networks imported whole (:mod:`vidfeat.nets.clipnet`) alike: ``forward_features(x)`` →
``[B, T, D]``, ``forward_head(f, mask)`` → ``[B, K]``, ``model(x)`` the two chained, the width
``feature_dim``, the ``config`` that rebuilds the network, and the options a subclass declares
as keyword-only ``__init__`` parameters with defaults."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from vidfeat.errors import ConfigError

# the parameters every network of rows takes; the others of a subclass are its options
COMMON = frozenset(
    ("self", "backbone", "num_classes", "in_chans_per_segment", "frames", "pretrained",
     "backbone_weights")
)  # fmt: skip


class RowNet(nn.Module):
    """The shared half of a network of rows; a subclass sets ``arch``, ``config`` and
    ``_feature_dim`` and implements ``forward_features`` and ``forward_head``."""

    arch: str = ""
    config: dict[str, Any]
    _feature_dim: int = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The network's options (keyword-only ``__init__`` parameters) and their defaults."""
        return {
            n: p.default
            for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY and n not in COMMON
        }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Refuse options the network does not have, listing those it has."""
        allowed = cls.option_defaults()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            listed = ", ".join(f"{k}={v}" for k, v in allowed.items()) or "none"
            raise ConfigError(
                f"--net-opt {unknown[0]}: not an option of {cls.arch}; its options (defaults) "
                f"are: {listed}"
            )

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @property
    def output_dim(self) -> int:
        """Alias of :attr:`feature_dim` (the per-row width the store receives)."""
        return self._feature_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, C, H, W]`` → logits ``[B, K]``."""
        return self.forward_head(self.forward_features(x), mask)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
