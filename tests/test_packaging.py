"""vidfeat installs one import name, ``vidfeat``, and nothing in a user's folder shadows it.

The wheel is built from a copy of the tracked sources (no network: the build backend is the
``setuptools`` the test extra installs) and installed with ``--no-deps`` into a fresh virtual
environment that sees this environment's packages through a ``.pth`` line, so torch and the rest
are not installed again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.slow


def _sources(dest: Path) -> Path:
    """What a wheel is built from: pyproject, README and the package, without caches."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "vidfeat", dest / "vidfeat", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _sources(tmp / "src")
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--disable-pip-version-check", "-q", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("vidfeat-*.whl")
    return whl


def test_wheel_installs_the_single_top_level_name_vidfeat(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["vidfeat"]
        entry_points = z.read(top_level.replace("top_level.txt", "entry_points.txt")).decode()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"vidfeat"}, roots
    assert "vidfeat/fusion/heads/itxn.py" in names and "vidfeat/cli/__init__.py" in names
    assert "vidfeat = vidfeat.cli:main" in entry_points


def test_installed_wheel_works_beside_a_users_cli_and_fusion(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bindir = env_dir / "bin"
    python = bindir / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # this environment's packages (torch, click, ...) without its editable vidfeat: a path
    # added by a .pth line is not a site dir, so the editable finder's own .pth is not run
    (site / "project-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    proc = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    # a user's folder with a cli.py and a fusion/ of its own, each of which fails on import
    user = tmp_path / "notebooks"
    (user / "fusion").mkdir(parents=True)
    (user / "cli.py").write_text("raise SystemExit('the user cli.py was imported')\n")
    (user / "fusion" / "__init__.py").write_text(
        "raise SystemExit('the user fusion was imported')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*argv: str | Path) -> str:
        p = subprocess.run(argv, cwd=user, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (argv, p.stdout[-2000:], p.stderr[-2000:])
        return p.stdout

    assert "extract" in run(bindir / "vidfeat", "--help")
    assert run(python, "-m", "vidfeat", "--version").startswith("vidfeat ")
    where = run(python, "-c", "import vidfeat.fusion, vidfeat.cli; print(vidfeat.fusion.__file__)")
    assert Path(where.strip()).is_relative_to(site), where
