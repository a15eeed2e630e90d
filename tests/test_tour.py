"""The README's tour runs as written: its shell blocks, in order, on a tiny dataset.

The commands are taken from README.md itself (every ```bash block of the "A tour" section), so
the test fails when the README's tour does. The only change is the size of the work, set the
way the README says a user can: VIDFEAT_<COMMAND>_<OPTION> environment variables (fewer and
shorter videos, one epoch, T=3), which the tour's own options never override.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

SMALL = {
    # a tiny dataset: 4 classes x 10 videos of 1 s at 10 fps
    "VIDFEAT_DATA_SYNTH_CLASSES": "4",
    "VIDFEAT_DATA_SYNTH_PER_CLASS": "10",
    "VIDFEAT_DATA_SYNTH_SECONDS": "1",
    "VIDFEAT_DATA_SYNTH_FPS": "10",
    # one epoch of every training, a smaller batch
    "VIDFEAT_TRAIN_RGB_EPOCHS": "1",
    "VIDFEAT_TRAIN_FLOW_EPOCHS": "1",
    "VIDFEAT_TRAIN_AUDIO_EPOCHS": "1",
    "VIDFEAT_FUSE_TRAIN_EPOCHS": "2",
    "VIDFEAT_TRAIN_RGB_WORKERS": "0",
    "VIDFEAT_TRAIN_FLOW_WORKERS": "0",
    "VIDFEAT_TRAIN_AUDIO_WORKERS": "0",
    # T=3 wherever the tour keeps the default grid (they must agree: the fields' T is the flow
    # features' T), fewer frames per training clip
    "VIDFEAT_EXTRACT_FLOW_SEGMENTS": "3",
    "VIDFEAT_EXTRACT_RGB_SEGMENTS": "3",
    "VIDFEAT_EXTRACT_AUDIO_SEGMENTS": "3",
    "VIDFEAT_TRAIN_FLOW_FIELDS_SEGMENTS": "3",
    "VIDFEAT_TRAIN_RGB_SEGMENTS": "2",
    "VIDFEAT_TRAIN_FLOW_SEGMENTS": "2",
    "VIDFEAT_TRAIN_AUDIO_SEGMENTS": "2",
    "VIDFEAT_ENSEMBLE_N_ESTIMATORS": "20",
}


def tour_blocks(readme: str) -> list[str]:
    section = readme.split("\n## A tour\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_the_tour_is_in_the_readme() -> None:
    blocks = tour_blocks((ROOT / "README.md").read_text())
    text = "\n".join(blocks)
    assert len(blocks) >= 5
    for step in ("data synth", "extract flow", "train rgb", "--init", "extract rgb", "fuse train",
                 "ensemble", "store verify", "store export", "vidfeat show"):  # fmt: skip
        assert step in text, step


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    blocks = tour_blocks((ROOT / "README.md").read_text())
    # the tour starts with `. .venv/bin/activate` in the repository: here, a venv whose bin is
    # this interpreter's (the one the suite runs in)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(
        f'export PATH="{Path(sys.executable).parent}:$PATH"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFEAT_")}
    env.update(SMALL)
    for i, block in enumerate(blocks):
        script = "set -euo pipefail\n" + (blocks[0].splitlines()[0] + "\n" if i else "") + block
        res = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, (
            f"block {i + 1}:\n{block}\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        )
    assert (tmp_path / "sheet.png").stat().st_size > 10_000
    assert len(list((tmp_path / "feats" / "rgb").glob("*.npy"))) == 40
    assert (tmp_path / "scores.csv").exists() and (tmp_path / "ens-scores.csv").exists()
