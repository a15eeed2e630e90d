"""Numeric precision and memory format of every network vidfeat runs: ``--precision``.

``--precision auto|fp32|bf16|fp16`` is resolved once per device by :func:`resolve_precision`
into a :class:`Precision`: the autocast dtype (None: float32) and whether the network runs in
the channels_last memory format. What it resolves to is what the set's ``set.json`` and the
run's ``config.yaml`` record, so a set is never mixed across precisions.

- ``auto``: bfloat16 autocast where the device runs it fast (CUDA with bf16 support; a CPU
  with AMX-BF16 or AVX512-BF16, as the CPU reports it to torch's own dispatcher, see
  :func:`cpu_bf16`), else float16 autocast on CUDA and float32 on the CPU.
- ``fp32``: float32 everywhere: exact reproduction of float32 features, parity work.
- ``bf16`` / ``fp16``: autocast in that dtype; refused, with the reason, on a device without it.

Weights stay float32 (autocast, fp32 master weights in training; fp16 training adds a grad
scaler). channels_last is a property of the network family, measured per family by
``bench/bench_precision.py`` (a network says so with a ``channels_last = True`` attribute: the
segment networks and VGGish, 1.2-1.45x in fp32 and more in bf16; not RAFT); it applies on CPU
and CUDA, in every precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from vidfeat.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = (
    "Numeric precision of the network: auto (bf16 autocast on a CPU with AMX-BF16 or "
    "AVX512-BF16 and on CUDA with bf16, fp16 on other CUDA devices, else fp32), fp32 (exact "
    "float32, for reproduction and parity work), bf16 or fp16 (autocast, refused where the "
    "device lacks it). Recorded in set.json and the run's config."
)
_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Precision:
    """What ``--precision`` resolved to on one device: ``name`` (fp32, bf16 or fp16) and
    ``channels_last`` (the network family runs faster in that memory format)."""

    name: str = "fp32"
    channels_last: bool = False
    dims: int = 2  # the network's convolutions: 2D (channels_last) or 3D (channels_last_3d)

    @property
    def dtype(self) -> Any:
        """The autocast dtype, None for float32."""
        import torch

        attr = _DTYPES[self.name]
        return None if attr is None else getattr(torch, attr)

    @property
    def memory_format(self) -> str:
        if not self.channels_last:
            return "contiguous"
        return "channels_last_3d" if self.dims == 3 else "channels_last"

    def autocast(self, device: Any) -> contextlib.AbstractContextManager:
        """The autocast context of this precision on ``device`` (a no-op for fp32)."""
        import torch

        dtype = self.dtype
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def prepare(self, model: Any) -> Any:
        """``model`` in the memory format of this precision (weights stay float32)."""
        import torch

        if self.channels_last and hasattr(model, "to"):
            fmt = torch.channels_last_3d if self.dims == 3 else torch.channels_last
            return model.to(memory_format=fmt)
        return model

    def record(self) -> dict[str, str]:
        """What a set or a run records: the precision (compared on resume) and the memory
        format (informational)."""
        return {"precision": self.name, "memory_format_info": self.memory_format}


def cpu_capabilities() -> dict[str, Any]:
    """What the CPU reports to torch's dispatcher (cpuinfo): ``amx_bf16``, ``avx512_bf16``...
    Empty where torch cannot tell (an older torch, a CPU it does not know)."""
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return {}
    try:
        return dict(get())
    except Exception:  # noqa: BLE001 - an unknown CPU: no fast path, fp32
        return {}


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bfloat16 fast, and what it has (or lacks), in words. bf16 needs
    matrix instructions (AMX-BF16) or the AVX-512 bf16 dot products, and a torch whose oneDNN
    uses them; without them torch emulates bf16, slower than float32."""
    import torch

    caps = cpu_capabilities()
    have = [n for k, n in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if caps.get(k)]
    if not have:
        return False, "this CPU has neither AMX-BF16 nor AVX512-BF16 (bf16 would be emulated)"
    if not torch.backends.mkldnn.is_available():
        return False, "this torch is built without oneDNN, which runs bf16 on the CPU"
    return True, f"the CPU has {' and '.join(have)}"


def cpu_fp16() -> tuple[bool, str]:
    """Whether this CPU runs float16 fast (AMX-FP16 or AVX512-FP16)."""
    caps = cpu_capabilities()
    have = [n for k, n in (("amx_fp16", "AMX-FP16"), ("avx512_fp16", "AVX512-FP16")) if caps.get(k)]
    if not have:
        return False, "this CPU has neither AMX-FP16 nor AVX512-FP16 (fp16 would be emulated)"
    return True, f"the CPU has {' and '.join(have)}"


def _supported(name: str, device: Any) -> tuple[bool, str]:
    """Whether ``device`` runs precision ``name`` fast, and why (not)."""
    import torch

    if name == "fp32":
        return True, "float32 runs everywhere"
    if device.type == "cuda":
        if name == "fp16":
            return True, "CUDA runs fp16"
        ok = torch.cuda.is_bf16_supported()
        return ok, "this GPU supports bf16" if ok else "this GPU has no bf16 support"
    if device.type == "cpu":
        return cpu_bf16() if name == "bf16" else cpu_fp16()
    return False, f"vidfeat runs reduced precision on CPU and CUDA only, not on {device.type}"


def resolve_name(asked: str, device: Any, *, flag: str = "--precision") -> str:
    """``asked`` (auto, fp32, bf16, fp16) as it runs on ``device``: ``auto`` picks the fastest
    precision the device runs well; an explicit one it cannot run is refused with the reason."""
    if asked not in PRECISIONS:
        raise ConfigError(f"{flag} must be one of {', '.join(PRECISIONS)} (got {asked!r})")
    if asked == "auto":
        for name in ("bf16", "fp16") if device.type == "cuda" else ("bf16",):
            if _supported(name, device)[0]:
                return name
        return "fp32"
    ok, why = _supported(asked, device)
    if not ok:
        raise ConfigError(f"{flag} {asked} on {device}: {why}; use --precision auto or fp32")
    return asked


def resolve_precision(
    asked: str, device: Any, model: Any = None, *, flag: str = "--precision"
) -> Precision:
    """The :class:`Precision` of ``asked`` on ``device`` for ``model`` (its family says whether
    channels_last is faster: a ``channels_last`` attribute, True on the 2D CNNs and the 3D ones,
    whose ``memory_dims = 3`` asks for channels_last_3d)."""
    name = resolve_name(asked, device, flag=flag)
    fast_format = bool(getattr(model, "channels_last", False)) and device.type in ("cpu", "cuda")
    return Precision(name, fast_format, 3 if getattr(model, "memory_dims", 2) == 3 else 2)
