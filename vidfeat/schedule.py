"""The learning-rate schedule both trainers share (``vidfeat.train`` and the fusion trainer):
a multiplier of the base rate as a function of the optimiser step."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier as a function of the optimiser step (for ``LambdaLR``; the
    fusion trainer's ``lr_at`` too): cosine decay to 0, or x0.1 at 1/3 and 2/3 of the steps."""
    total = max(1, total_steps)
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    milestones = (total // 3, 2 * total // 3)
    return lambda step: 0.1 ** sum(step >= m for m in milestones)
