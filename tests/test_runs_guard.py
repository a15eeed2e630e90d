"""Nothing the user made is overwritten unasked, and fine-tuning starts from a run.

Every training command refuses an --out that holds a run (naming --resume and --overwrite);
--overwrite moves the old run aside, never deletes it; `fuse eval` and `ensemble` refuse an
output that exists. `train rgb --init RUN` starts from every weight of RUN but the classifier
(a vidfeat run, an imported one), and refuses options that contradict the run's architecture.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.models import load_trained

TINY = ["--segments", "2", "--frames", "2", "--size", "32", "--short-side", "40", "--epochs", "1",
        "--batch-size", "4", "--workers", "0", "--optimizer", "adamw", "--quiet"]  # fmt: skip
NET = ["--backbone", "resnet10t", "--net-opt", "txb_width=16"]


def cli(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tiny_feature_store(root: Path) -> tuple[Path, Path, Path]:
    """A store with one (T=4, D=8) set `f` of 30 labelled videos, and train/val lists."""
    import numpy as np

    from vidfeat.store import FeatureStore, ShardWriter

    store = root / "store"
    fs = FeatureStore(store)
    fs.ensure_set("f", {"modality": "rgb", "T": 4, "feature_shape": [4, 8], "dtype": "float32"})
    rng = np.random.default_rng(0)
    rows = [(f"v{i}", str(i % 3)) for i in range(30)]
    with ShardWriter(fs.set_dir("f"), "fixture") as w:
        for vid, y in rows:
            x = rng.normal(size=(4, 8)).astype(np.float32)
            x[:, int(y)] += 3.0
            w.add(vid, x, {"label": y})
    lists = []
    for name, part in (("train", rows[:18]), ("val", rows[18:])):
        p = root / f"{name}.csv"
        p.write_text("path,label,video_id\n" + "".join(f"{v}.mp4,{y},{v}\n" for v, y in part))
        lists.append(p)
    return store, lists[0], lists[1]


@pytest.fixture(scope="module")
def run(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "rgb"
    code, text = cli("train", "rgb", "--videos", tiny_synth / "train.csv", "--out", out, *NET,
                     *TINY)  # fmt: skip
    assert code == 0, text
    return out


def test_training_refuses_an_out_that_holds_a_run(run: Path, tiny_synth: Path) -> None:
    before = sha(run / "best.pt")
    code, text = cli("train", "rgb", "--videos", tiny_synth / "train.csv", "--out", run, *NET,
                     *TINY)  # fmt: skip
    assert code != 0 and "--resume" in text and "--overwrite" in text, text
    assert sha(run / "best.pt") == before  # untouched
    code, text = cli("train", "rgb", "--videos", tiny_synth / "train.csv", "--out", run, *NET,
                     *TINY, "--resume", "--overwrite")  # fmt: skip
    assert code != 0 and "exclude each other" in text


def test_overwrite_moves_the_old_run_aside(tiny_synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = ["train", "rgb", "--videos", tiny_synth / "train.csv", "--out", out, *NET, *TINY]
    assert cli(*args)[0] == 0
    before = sha(out / "best.pt")
    code, text = cli(*args, "--overwrite")
    assert code == 0, text
    aside = list(tmp_path.glob("r.replaced-*"))
    assert len(aside) == 1 and sha(aside[0] / "best.pt") == before
    assert (out / "best.pt").exists()


def test_fuse_train_eval_and_ensemble_refuse_existing_outputs(tmp_path: Path) -> None:
    store, train_csv, val_csv = tiny_feature_store(tmp_path)
    fuse = ["fuse", "train", "--store", store, "--features", "f", "--head", "single",
            "--train", train_csv, "--val", val_csv, "--epochs", "1", "--quiet",
            "--out", tmp_path / "fuse"]  # fmt: skip
    assert cli(*fuse)[0] == 0
    before = sha(tmp_path / "fuse" / "best.pt")
    code, text = cli(*fuse)
    assert code != 0 and "--resume" in text and "--overwrite" in text
    assert sha(tmp_path / "fuse" / "best.pt") == before
    assert cli(*fuse, "--overwrite")[0] == 0
    ev = ["fuse", "eval", "--run", tmp_path / "fuse", "--store", store, "--videos", val_csv]
    assert cli(*ev)[0] == 0
    code, text = cli(*ev)
    assert code != 0 and "--overwrite" in text and "--name" in text
    assert cli(*ev, "--overwrite")[0] == 0
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "notes.txt").write_text("mine")
    scores = tmp_path / "scores.csv"
    scores.write_text("video_id,c0,c1,c2\n" + "".join(f"v{i},0.2,0.3,0.5\n" for i in range(30)))
    ens = ["ensemble", "--members", scores, "--videos", val_csv, "--folds", "2",
           "--out", tmp_path / "ens"]  # fmt: skip
    code, text = cli(*ens)
    assert code != 0 and "--overwrite" in text
    assert (tmp_path / "ens" / "notes.txt").read_text() == "mine"


def test_init_fine_tunes_every_weight_but_the_classifier(
    run: Path, tiny_synth: Path, tmp_path: Path
) -> None:
    """Two classes only: the classifier is rebuilt; the rest starts from the run (the backbone,
    TMBs and TXB options come from it: none is passed here)."""
    two = tmp_path / "two.csv"
    rows = (tiny_synth / "train.csv").read_text().splitlines()
    labels = sorted({r.split(",")[1] for r in rows[1:]})[:2]
    keep = [f"{tiny_synth}/{r}" for r in rows[1:] if r.split(",")[1] in labels]
    two.write_text("\n".join([rows[0], *keep]) + "\n")
    out = tmp_path / "ft"
    code, text = cli("train", "rgb", "--videos", two, "--out", out, "--init", run,
                     *TINY, "--lr", "1e-12")  # fmt: skip
    assert code == 0 and "classifier (rebuilt for 2 classes)" in text, text
    src, ft = load_trained(run), load_trained(out)
    assert ft.config.backbone == "resnet10t" and ft.config.net_options["txb_width"] == 16
    assert ft.config.init == str(run) and ft.config.init_sha256
    a, b = src.model.state_dict(), ft.model.state_dict()
    assert b["fc.weight"].shape[0] == 2
    # lr 1e-12: nothing moved but BatchNorm statistics; every conv/linear weight is the run's
    for k in a:
        if not k.startswith("fc.") and k.endswith("weight") and a[k].dim() > 1:
            assert torch.allclose(a[k], b[k], atol=1e-9), k
    code, text = cli("train", "rgb", "--videos", two, "--out", tmp_path / "x", "--init", run,
                     "--backbone", "resnet18", *TINY)  # fmt: skip
    assert code != 0 and "--backbone resnet18 contradicts" in text and "resnet10t" in text


def test_init_from_an_imported_run(tiny_synth: Path, tmp_path: Path) -> None:
    """An imported network (a timm ImageNet classifier packaged as a TSN run) fine-tuned on the
    synthetic classes, as one fine-tunes the authors' Kinetics StNet."""
    import timm

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    imported = tmp_path / "imagenet"
    code, text = cli("models", "import", "timm", "resnet10t", "--weights", weights,
                     "--out", imported)  # fmt: skip
    assert code == 0, text
    out = tmp_path / "ft"
    no_frames = [a for i, a in enumerate(TINY) if "--frames" not in TINY[max(0, i - 1) : i + 1]]
    code, text = cli("train", "rgb", "--videos", tiny_synth / "train.csv", "--out", out,
                     "--init", imported, *no_frames)  # fmt: skip
    assert code == 0 and "rebuilt for 4 classes" in text, text
    assert load_trained(out).config.arch == "tsn"


def test_runs_from_before_the_residual_default_load_as_paper(run: Path, tmp_path: Path) -> None:
    """A run that records no tmb was made when `paper` was StNet's default: it loads as such."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    assert cfg["net_options"]["tmb"] == "residual"  # new runs record every option
    del cfg["net_options"]["tmb"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_trained(old).model.tmb["layer2"].mode == "paper"
    assert load_trained(run).model.tmb["layer2"].mode == "residual"


def test_momentum_with_adamw_is_refused_and_resume_names_what_may_change(
    run: Path, tiny_synth: Path
) -> None:
    code, text = cli("train", "rgb", "--videos", tiny_synth / "train.csv", "--out", run, *NET,
                     *TINY, "--momentum", "0.5")  # fmt: skip
    assert code != 0 and "--momentum applies to --optimizer sgd" in text
    code, text = cli("train", "rgb", "--videos", tiny_synth / "train.csv", "--out", run, *NET,
                     *TINY, "--resume", "--lr", "0.5")  # fmt: skip
    assert code != 0 and "lr=0.01;" in text and "lr=0.5" in text
    for flag in ("--epochs", "--workers", "--device", "--precision", "--video-root", "--val"):
        assert flag in text
