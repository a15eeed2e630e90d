from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vidfeat import __version__
from vidfeat.cli import main


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p) or "vidfeat")
def test_help_for_every_command(path: tuple[str, ...]) -> None:
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: " in res.output


def test_version() -> None:
    """A bug report's first lines: vidfeat, the feature libraries, and CUDA."""
    import av
    import cv2
    import timm
    import torch

    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and f"vidfeat {__version__}" in res.output
    for name, version in [
        ("torch", torch.__version__),
        ("timm", timm.__version__),
        ("OpenCV", cv2.__version__),
        ("PyAV", av.__version__),
    ]:
        assert re.search(rf"^\s+{name}\s+{re.escape(version)}$", res.output, re.M), res.output
    cuda = "available" if torch.cuda.is_available() else "not available"
    assert re.search(rf"^\s+CUDA\s+{cuda}", res.output, re.M), res.output


def test_help_loads_no_heavy_library() -> None:
    """`vidfeat --help` and a group's --help stay instant: torch, OpenCV, PyAV and h5py load
    inside the command that runs (so do the options generated from a dataclass whose module
    imports torch)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from vidfeat.cli import main\n"
        "for g in ([], ['data'], ['extract'], ['train'], ['fuse'], ['store'], ['models']):\n"
        "    assert CliRunner().invoke(main, [*g, '--help']).exit_code == 0, g\n"
        "print(sorted(m for m in ('torch', 'cv2', 'av', 'h5py') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_package_asks_for_compatible_torch_not_a_build() -> None:
    """pip install -e . into an environment with its own torch 2.x (a CUDA build) keeps it:
    the requirement is a range that admits every torch from 2.4 on, while this project's own
    install pins the exact builds through constraints.txt."""
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {r.name: r for r in map(Requirement, deps)}
    for name, other_builds in [
        ("torch", ["2.4.0", "2.5.1+cu124", "2.14.1", "2.20.0"]),
        ("torchvision", ["0.19.0", "0.20.1+cu124", "0.29.1"]),
    ]:
        assert not any(s.operator in ("==", "===", "~=") for s in reqs[name].specifier)
        assert all(reqs[name].specifier.contains(v) for v in other_builds), reqs[name]
    pins = (root / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    assert "--constraint constraints.txt" in (root / "Makefile").read_text()


def test_synth_then_probe(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "data",
            "synth",
            str(out),
            "--classes",
            "4",
            "--per-class",
            "2",
            "--seconds",
            "0.5",
            "--size",
            "32",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "8 videos (4 train, 4 val" in res.output
    res = runner.invoke(main, ["data", "probe", str(out / "train.csv")])
    assert res.exit_code == 0, res.output
    assert "probe: 4 done, 0 skipped, 0 failed" in res.output
    assert "32x32" in res.output


def test_probe_flags_unreadable_files_and_exits_non_zero(tmp_path: Path, bframe_video) -> None:
    (tmp_path / "bad.mp4").write_text("not a video")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{bframe_video[0]}\nbad.mp4\nmissing.mp4\n")
    res = CliRunner().invoke(main, ["data", "probe", str(lst)])
    assert res.exit_code == 1
    assert "bad      UNREADABLE" in res.output and "missing  UNREADABLE" in res.output
    assert "1 done, 0 skipped, 2 failed" in res.output


def test_bad_option_names_the_flag(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "x"), "--classes", "2"])
    assert res.exit_code != 0
    assert "--classes must be between 4 and 24" in res.output
    res = CliRunner().invoke(main, ["data", "probe", str(tmp_path / "nope.csv")])
    assert res.exit_code != 0 and "video list not found" in res.output


def test_store_warnings_are_one_line(tmp_path: Path) -> None:
    """A warning about a store (here a "shard" that is a folder) is one ``warning:`` line on
    stderr, not Python's file, line and source."""
    import json

    from vidfeat.cli import main

    s = tmp_path / "store" / "a"
    s.mkdir(parents=True)
    (s / "set.json").write_text(json.dumps({"modality": "rgb", "feature_shape": [2, 3]}))
    (s / "part-x-0.h5").mkdir()
    args = ["store", "export", str(tmp_path / "store"), "--set", "a", "--out", str(tmp_path / "x")]
    res = CliRunner().invoke(main, args)
    lines = [ln for ln in res.stderr.splitlines() if "is skipped, never read" in ln]
    assert lines and all(ln.startswith("warning: ") for ln in lines), res.stderr
    assert "StoreWarning" not in res.stderr and "warnings.warn" not in res.stderr
