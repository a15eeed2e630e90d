"""Loading a checked torch file: :func:`load_torch_file`, and the tensors none of which may
claim more elements than its storage holds."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError
from vidfeat.nets.torchfile.archives import (
    _check_legacy,
    _check_zip,
)
from vidfeat.nets.torchfile.files import (
    _Refused,
    _Snapshot,
    open_regular,
)

# --------------------------------------------------------------------------- loading


def _check(snap: _Snapshot, size: int) -> None:
    """Raises :class:`_Refused` unless the file is a zip or legacy torch.save that passes the
    checks of the module docstring."""
    snap.seek(0)
    head = snap.read(4)
    if head == b"PK\x03\x04":  # as torch.serialization._is_zipfile decides
        _check_zip(snap, size)
    elif head[:2] == b"\x80\x02":
        _check_legacy(snap, size)
    else:
        raise _Refused("neither a zip archive nor a legacy torch file")


def load_torch_file(path: str | Path, what: str = "") -> Any:
    """What ``torch.save`` wrote to ``path``, read as the module docstring says: a regular
    file, checked (structure, pickles, storage sizes) before torch reads it, loaded with
    ``weights_only=True`` onto the CPU, its tensors within their storages. ``what`` (e.g.
    ``--flow-weights``) starts every error message, before the path."""
    label = f"{what} {path}" if what else str(path)
    fd, size = open_regular(path, label)
    try:
        snap = _Snapshot(fd, size)
        try:
            _check(snap, size)
        except _Refused as exc:
            raise ConfigError(f"{label}: refused, not a plain state dict ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"{label}: cannot be read ({exc.strerror or exc})") from None
        except Exception as exc:  # noqa: BLE001 - a file no check foresaw is still refused
            raise ConfigError(f"{label}: refused, not a plain state dict ({_brief(exc)})") from None
        snap.pinning = False
        snap.seek(0)
        import torch

        try:
            obj = torch.load(
                io.BufferedReader(snap, 1 << 16), map_location="cpu", weights_only=True
            )
        except Exception as exc:  # noqa: BLE001 - whatever torch makes of a foreign file
            raise ConfigError(f"{label}: refused, not a plain state dict ({_brief(exc)})") from None
    finally:
        os.close(fd)
    problem = _tensor_beyond_storage(obj)
    if problem:
        raise ConfigError(f"{label}: {problem}; pass a plain state dict")
    return obj


def _brief(exc: BaseException) -> str:
    """One line of a torch exception (weights-only errors run to a paragraph)."""
    text = str(exc)
    for marker in ("WeightsUnpickler error: ",):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:300]}"


def fit_state(into: Any, state: Any, refusal: str) -> None:
    """``into.load_state_dict(state)`` (a network or an optimiser), or one
    :class:`ConfigError`, ``<refusal> (<error>: <its first line>)``, when the state does not
    fit it: whatever torch's loaders make of a foreign state becomes that one message."""
    try:
        into.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - whatever the loaders make of foreign state
        first = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{refusal} ({type(exc).__name__}: {first})") from None


def _tensor_beyond_storage(obj: Any) -> str | None:
    """A message for the first tensor holding more elements than its storage: a zero-stride
    (expanded) or overlapping view, which no saved state dict has; else None."""
    import torch

    todo: list[tuple[Any, str]] = [(obj, "")]
    seen: set[int] = set()
    while todo:
        item, where = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            if beyond_storage(item):
                return (
                    f"tensor {where or 'the file'} claims {list(item.shape)} ({item.numel():,} "
                    f"elements) over {item.untyped_storage().nbytes():,} bytes of data (repeated "
                    "or overlapping strides, which no saved state dict has)"
                )
        elif isinstance(item, dict):
            todo += [(v, f"{where} → {k!r}" if where else repr(k)) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            todo += [(v, f"{where}[{i}]") for i, v in enumerate(item)]
    return None


def beyond_storage(t: Any) -> bool:
    """The tensor has more elements than its storage holds: a zero-stride (expanded) or
    overlapping view, a small file claiming a huge tensor."""
    try:
        return t.numel() * t.element_size() > t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return False
