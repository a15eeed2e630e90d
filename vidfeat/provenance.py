"""Provenance: what set.json files and run folders record about where a result came from.

Library versions (read without importing torch where it is not loaded yet) and file hashes.
Imports nothing of vidfeat but its version string (and, to hash a file, the regular-file
opener of :mod:`vidfeat.nets.torchfile`, which imports no torch).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from vidfeat._version import __version__

_MIB = 1 << 20


def file_sha256(path: str | Path, what: str = "") -> str:
    """sha256 of a regular file read in 1 MiB blocks (a checkpoint's identity in set.json).
    Anything else (a FIFO would block, ``/dev/zero`` never end) raises ConfigError naming
    ``what`` and the path."""
    import os

    from vidfeat.nets.torchfile import open_regular

    fd, _ = open_regular(path, f"{what} {path}" if what else None)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        for block in iter(lambda: fh.read(_MIB), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict:
    import av
    import cv2
    import h5py

    out = {
        "vidfeat_version": __version__,
        "opencv_version": cv2.__version__,
        "pyav_version": av.__version__,
        "h5py_version": h5py.__version__,
    }
    torch_version = _torch_version()
    if torch_version is not None:
        out["torch_version"] = torch_version
    return out


def _torch_version() -> str | None:
    """``torch.__version__`` without importing torch when it is not loaded yet: importing it
    costs seconds per process, and flow extraction never uses it. Read from ``torch/version.py``
    by parsing (never executing) it, so the string equals ``torch.__version__`` including its
    local part (``+cpu``); the distribution's metadata is the fallback."""
    mod = sys.modules.get("torch")
    if mod is not None:
        return str(mod.__version__)
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):  # pragma: no cover - torch is a dependency
        spec = None
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    for where in locations:
        version = _assigned_string(Path(where, "version.py"), "__version__")
        if version is not None:
            return version
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None


def _assigned_string(path: Path, name: str) -> str | None:
    """The string literal assigned to ``name`` at the top level of a Python file, if any."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if (
            any(isinstance(t, ast.Name) and t.id == name for t in targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return None


def environment_report() -> dict[str, str]:
    """What ``vidfeat --version`` prints beside vidfeat's own version: the libraries that
    compute features (their ``__version__``) and whether CUDA is usable."""
    out: dict[str, str] = {}
    for label, module in (
        ("torch", "torch"),
        ("timm", "timm"),
        ("OpenCV", "cv2"),
        ("PyAV", "av"),
        ("h5py", "h5py"),
    ):
        try:
            out[label] = str(importlib.import_module(module).__version__)
        except ImportError:
            out[label] = "not installed"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out["CUDA"] = f"available: {torch.version.cuda}, {', '.join(names)}"
        else:
            built = torch.version.cuda
            out["CUDA"] = "not available" + (f" (torch built for CUDA {built})" if built else "")
    except ImportError:
        out["CUDA"] = "unknown (torch not installed)"
    return out
