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
    # ... and 2 untrimmed videos of 13-15 s (each run of data synth leaves the other kind's
    # variables out, with a note)
    "VIDFEAT_DATA_SYNTH_VIDEOS": "2",
    "VIDFEAT_DATA_SYNTH_MIN_SECONDS": "13",
    "VIDFEAT_DATA_SYNTH_MAX_SECONDS": "15",
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
                 "ensemble", "store verify", "store export", "vidfeat show", "--untrimmed",
                 "--grid snippets", "--layout actionformer", "--layout bmn",
                 "--layout gtad"):  # fmt: skip
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
    # untrimmed: one (L, C) file per video, rgb + flow + audio along C; the BMN csv; G-TAD's h5
    import numpy as np

    af = sorted((tmp_path / "feats" / "af").glob("*.npy"))
    assert len(af) == 2 and all(np.load(f).shape[0] > 20 for f in af)
    assert "feat_stride: 4" in (tmp_path / "feats" / "af" / "actionformer.yaml").read_text()
    assert len(list((tmp_path / "feats" / "bmn").glob("*.csv"))) == 3  # + manifest.csv
    assert (tmp_path / "feats" / "gtad" / "rgb_test.h5").exists()
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
