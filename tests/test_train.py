"""`vidfeat train rgb|flow` and `vidfeat extract rgb|flow --checkpoint` on a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.models import load_trained
from vidfeat.store import FeatureStore


def tiny(epochs: int = 2) -> list[str]:
    return [
        "--backbone",
        "resnet10t",
        "--segments",
        "2",
        "--frames",
        "2",
        "--size",
        "48",
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--optimizer",
        "adamw",
        "--lr",
        "0.001",
        "--quiet",
    ]


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def rgb_run(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "stnet"
    code, text = cli(
        "train",
        "rgb",
        "--videos",
        str(tiny_synth / "train.csv"),
        "--val",
        str(tiny_synth / "val.csv"),
        "--out",
        str(out),
        "--arch",
        "stnet",
        "--short-side",
        "56",
        "--net-opt",
        "txb_width=32",
        *tiny(),
    )
    assert code == 0, text
    return out


def test_train_rgb_writes_a_complete_run_folder(rgb_run: Path) -> None:
    for f in ("config.yaml", "classes.txt", "best.pt", "last.pt", "metrics.jsonl", "curves.png"):
        assert (rgb_run / f).exists(), f
    rows = [json.loads(x) for x in (rgb_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "val_prec1", "val_prec5", "lr"} <= set(rows[0])
    state = torch.load(rgb_run / "best.pt", weights_only=True)  # a plain state dict
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = load_trained(rgb_run)
    assert (
        net.config.arch == "stnet" and net.classes == (rgb_run / "classes.txt").read_text().split()
    )


def test_resume_continues_after_the_last_epoch(
    rgb_run: Path, tiny_synth: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(rgb_run, run)
    code, text = cli(
        "train",
        "rgb",
        "--videos",
        str(tiny_synth / "train.csv"),
        "--val",
        str(tiny_synth / "val.csv"),
        "--out",
        str(run),
        "--arch",
        "stnet",
        "--short-side",
        "56",
        "--net-opt",
        "txb_width=32",
        "--resume",
        *tiny(epochs=5),
    )
    assert code == 0, text
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    # the 2-epoch run ended past both of its milestones (lr 1e-5); resumed, the schedule
    # follows --epochs 5 (12 videos, batch 4: 3 steps an epoch, milestones at steps 5 and 10)
    assert rows[1]["lr"] == pytest.approx(1e-5)
    assert rows[2]["lr"] == pytest.approx(1e-4) and rows[3]["lr"] == pytest.approx(1e-5)

    # options that change the model are refused by name
    code, text = cli(
        "train", "rgb", "--videos", str(tiny_synth / "train.csv"), "--out", str(run),
        "--arch", "tsn", "--short-side", "56", "--resume", *tiny(epochs=4),
    )  # fmt: skip
    assert code != 0 and "arch='stnet'" in text and "arch='tsn'" in text


def test_extract_rgb_stores_features_and_scores(
    rgb_run: Path, tiny_synth: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    code, text = cli(
        "extract",
        "rgb",
        "--checkpoint",
        str(rgb_run),
        "--videos",
        str(tiny_synth / "val.csv"),
        "--store",
        str(store),
        "-T",
        "3",
        "--batch-size",
        "3",
        "--workers",
        "1",
        "--precision",
        "fp32",  # compared below with a float32 forward
        "--quiet",
    )
    assert code == 0, text
    fs = FeatureStore(store).open_set("rgb")
    assert len(fs) == 4
    feats, attrs = fs.get(fs.ids()[0])
    assert feats.shape == (3, 512) and feats.dtype == np.float32  # resnet10t: C5 = 512
    scores = fs.get_extra(fs.ids()[0], "scores")
    assert scores.shape == (4,) and abs(scores.sum() - 1) < 1e-4
    assert attrs["segment_start"].shape == (3,) and "class_index" in attrs
    cfg = fs.config
    assert cfg["checkpoint_sha256"] and cfg["classes"] and cfg["feature_shape"] == [3, 512]
    # the same features as running the network by hand on the same clip
    net = load_trained(rgb_run)
    from vidfeat.clips import ClipSpec, RGBClips
    from vidfeat.videolist import load_list

    vl = load_list(tiny_synth / "val.csv")
    ds = RGBClips(vl, ClipSpec(3, 2, 48, 56, train=False))
    i = vl.ids().index(fs.ids()[0])
    with torch.no_grad():
        ref = net.model.forward_features(ds[i]["x"][None])[0].numpy()
    assert np.allclose(ref, feats, atol=1e-4)
    code, text = cli(
        "extract", "rgb", "--videos", str(tiny_synth / "val.csv"), "--store", str(store)
    )
    assert code != 0 and "--checkpoint" in text


def test_train_and_extract_flow(tiny_synth: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = tmp_path / "flow"
    code, text = cli(
        "train",
        "flow",
        "--method",
        "farneback",
        "--store",
        str(store),
        "--videos",
        str(tiny_synth / "train.csv"),
        "--val",
        str(tiny_synth / "val.csv"),
        "--out",
        str(out),
        "--arch",
        "tsn",
        "--fields-segments",
        "3",
        "--short-side",
        "48",
        *tiny(),
    )
    assert code == 0, text
    fields = FeatureStore(store).open_set("farneback-fields")
    assert len(fields) == 16  # train + val fields were computed first
    code, text = cli(
        "extract",
        "flow",
        "--method",
        "farneback",
        "--checkpoint",
        str(out),
        "--videos",
        str(tiny_synth / "val.csv"),
        "--store",
        str(store),
        "-T",
        "3",
        "-N",
        "2",
        "--short-side",
        "48",
        "--quiet",
    )
    assert code == 0, text
    fs = FeatureStore(store).open_set("farneback")
    assert len(fs) == 4 and fs.get(fs.ids()[0])[0].shape == (3, 512)
    code, text = cli(
        "extract",
        "flow",
        "--method",
        "farneback",
        "--checkpoint",
        str(out),
        "--videos",
        str(tiny_synth / "val.csv"),
        "--store",
        str(store),
        "-T",
        "5",
        "--quiet",
    )
    assert code != 0 and "T=3" in text


def test_persistent_workers_draw_new_augmentations_every_epoch(tiny_synth: Path) -> None:
    """Workers keep their own dataset copy; the epoch must reach them with each index."""
    from vidfeat.models import TrainConfig
    from vidfeat.train import build_dataset, make_loader
    from vidfeat.videolist import load_list

    cfg = TrainConfig(
        modality="rgb", train=str(tiny_synth / "train.csv"), val=None, arch="stnet",
        segments=2, frames=2, size=40, short_side=56, seed=3,
    )  # fmt: skip
    ds = build_dataset(cfg, load_list(cfg.train), train=True)
    loader = make_loader(ds, 4, 1, True, torch.device("cpu"), seed=3)

    def epoch(e: int) -> dict[int, torch.Tensor]:
        loader.sampler.set_epoch(e)
        return {i: x for b in loader for i, x in zip(b["index"], b["x"], strict=True)}

    first, second, first_again = epoch(0), epoch(1), epoch(0)
    assert sorted(first) == sorted(second) == list(range(len(ds)))
    assert all(torch.equal(first[i], first_again[i]) for i in first)  # seeded by epoch
    changed = sum(not torch.equal(first[i], second[i]) for i in first)
    assert changed == len(ds)  # new offsets / crops for every video
