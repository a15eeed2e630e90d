from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main
from vidfeat import __version__


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
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


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
