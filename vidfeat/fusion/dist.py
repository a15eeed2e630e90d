"""The torchrun context of the fusion trainer: where this process sits, its process group, and
the few collectives training needs.

Under ``torchrun`` (WORLD_SIZE > 1) every process trains a replica; outside it (world 1) every
function here is a plain local call, so the trainer has one code path. Collectives are called
by every rank in the same order or not at all: a rank that skips one leaves the others waiting.

The stop-signal flag itself lives in :mod:`vidfeat.stop` (extraction uses it too);
:func:`stop_requested` turns it into a decision every rank shares.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.stop import StopSignals

T_ = TypeVar("T_")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torchrun launch; world 1 is a plain single process."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistContext:
    """torchrun (python -m torch.distributed.run) sets WORLD_SIZE, RANK and LOCAL_RANK."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers; launch with torchrun or unset them"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} does not fit WORLD_SIZE={world}; launch with torchrun")
    return DistContext(world, rank, local)


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a torchrun launch (which prints nothing)."""
    return dist_from_env().main


def init_processes(device_flag: str, ctx: DistContext) -> tuple[torch.device, bool]:
    """The device of this process (``device_flag``: the --device option) and whether we opened
    the process group (and must close it). CUDA: one GPU per process (cuda:LOCAL_RANK) and
    NCCL; CPU: gloo."""
    import torch.distributed as dist

    device = resolve_device(device_flag)
    if not ctx.active:
        return device, False
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"--device {device_flag}: under torchrun each process uses cuda:LOCAL_RANK; "
                "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():  # a library caller set the group up; it is theirs to close
        return device, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


@contextmanager
def processes(device_flag: str, ctx: DistContext) -> Iterator[torch.device]:
    """:func:`init_processes` for the duration of a block: yields this process's device and
    closes the process group afterwards if it opened it."""
    device, owns_group = init_processes(device_flag, ctx)
    try:
        yield device
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def share(ctx: DistContext, fn: Callable[[], T_]) -> T_:
    """Run ``fn`` on rank 0 only and hand its result to every rank; an error on rank 0 is
    raised on every rank (instead of leaving the others waiting in the next collective)."""
    if not ctx.active:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    error: Exception | None = None
    if ctx.main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the others
            error = exc
            msg = exc.message if isinstance(exc, VidfeatError) else f"rank 0 failed: {exc!r}"
            box[0] = ("error", msg)
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise ConfigError(value)
    return value


def all_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks (float64, so counts stay exact)."""
    if not ctx.active:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any."""
    return all_sum(ctx, [float(flag)], device)[0] > 0


def stop_requested(ctx: DistContext, stop: StopSignals, device: torch.device) -> bool:
    """Whether any rank caught Ctrl-C / SIGTERM: all ranks stop at the same step."""
    return any_rank(ctx, stop.requested, device)
