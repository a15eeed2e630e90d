"""Fusion data join, trainer and `vidfeat fuse` commands on stores of synthetic features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.fusion.data import FusionDataset, nearest_index
from vidfeat.store import FeatureStore, ShardWriter
from vidfeat.videolist import load_list

K, T, D = 4, 6, 8


def write_set(
    root: Path,
    name: str,
    modality: str,
    ids,
    labels,
    make,
    t: int = T,
    no_audio: set[str] = frozenset(),
) -> None:
    fs = FeatureStore(root)
    fs.ensure_set(name, {"modality": modality, "T": t, "feature_shape": [t, D], "dtype": "float32"})
    with ShardWriter(fs.set_dir(name), "fixture", max_videos=7) as w:
        for vid, y in zip(ids, labels, strict=True):
            w.add(
                vid,
                make(vid, y).astype(np.float32),
                {"label": str(y), "has_audio": vid not in no_audio},
            )


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two modalities with complementary cues: 'a' tells {0,1} from {2,3}, 'b' tells {0,2}
    from {1,3}; each alone tops out at 50%, together they identify the class."""
    root = tmp_path_factory.mktemp("fstore")
    rng = np.random.default_rng(0)
    n_train, n_val = 24, 8
    ids, labels, split = [], [], []
    for k in range(K):
        for i in range(n_train + n_val):
            ids.append(f"c{k}_{i:02d}")
            labels.append(k)
            split.append("train" if i < n_train else "val")
    protos_a = rng.normal(0, 1, (2, D))
    protos_b = rng.normal(0, 1, (2, D))

    def make_a(vid, y):
        return protos_a[y // 2] * 1.5 + rng.normal(0, 0.6, (T, D))

    def make_b(vid, y):
        return protos_b[y % 2] * 1.5 + rng.normal(0, 0.6, (T, D))

    store = root / "store"
    write_set(store, "a", "rgb", ids, labels, make_a)
    # 'b' misses one training video (a failed extraction) and has another T
    keep = [i for i in range(len(ids)) if ids[i] != "c1_03"]
    write_set(
        store,
        "b",
        "audio",
        [ids[i] for i in keep],
        [labels[i] for i in keep],
        lambda v, y: np.repeat(make_b(v, y)[:3], 1, axis=0),
        t=3,
        no_audio={"c2_05"},
    )
    for name in ("train", "val"):
        with open(root / f"{name}.csv", "w") as fh:
            fh.write("path,label,video_id\n")
            for vid, y, s in zip(ids, labels, split, strict=True):
                if s == name:
                    fh.write(f"{vid}.mp4,class{y},{vid}\n")
    return store, root / "train.csv", root / "val.csv"


def test_join_masks_missing_and_silent_videos_and_resamples_t(feature_store) -> None:
    store, train, _ = feature_store
    ds = FusionDataset(store, ["a", "b"], load_list(train))
    assert ds.T == 6 and ds.dims == {"a": 8, "b": 8}
    lines = ds.report.lines()
    assert "b missing for 1 of 96 videos (zeros, masked)" in lines
    assert "b: no audio track in 1 of 96 videos (masked)" in lines
    assert "b has T=3; resampled to T=6 by nearest index" in lines
    item = ds[ds.videos.ids().index("c1_03")]
    assert item["masks"]["b"].sum() == 0 and item["feats"]["b"].abs().sum() == 0
    assert item["masks"]["a"].sum() == 6
    item = ds[ds.videos.ids().index("c2_05")]
    assert item["masks"]["b"].sum() == 0
    assert nearest_index(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_normalisation_and_augmentation(feature_store) -> None:
    store, train, _ = feature_store
    ds = FusionDataset(store, ["a"], load_list(train), cache=True)
    norm = ds.compute_norm()
    ds.norm = norm
    x = np.stack([ds[i]["feats"]["a"].numpy() for i in range(len(ds))]).reshape(-1, D)
    assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=1e-3)
    aug = FusionDataset(store, ["a"], load_list(train), augment=True, seed=1)
    lengths = {int(aug[i]["masks"]["a"].sum()) for i in range(20)}
    assert len(lengths) > 1 and min(lengths) >= 4
    assert (aug[0]["masks"]["a"] == aug[0]["masks"]["a"]).all()  # deterministic per epoch


def fuse(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["fuse", *args])
    return res.exit_code, res.output


def test_fusion_beats_single_modalities(feature_store, tmp_path: Path) -> None:
    store, train, val = feature_store
    common = [
        "--store",
        str(store),
        "--train",
        str(train),
        "--val",
        str(val),
        "--epochs",
        "25",
        "--batch-size",
        "16",
        "--quiet",
    ]
    accs = {}
    small = {
        "single": "hidden=32",
        "txn": "width=32",
        "itxn": "width=32",
        "fflstm": "hidden=16",
        "attention-clusters": "clusters=4",
    }
    runs = [("a", "single"), ("b", "single")] + [
        ("a,b", h) for h in ("txn", "itxn", "fflstm", "attention-clusters")
    ]
    for feats, head in runs:
        out = tmp_path / f"{head}-{feats}"
        code, text = fuse(
            "train",
            *common,
            "--features",
            feats,
            "--head",
            head,
            "--out",
            str(out),
            "--head-opt",
            small[head],
        )
        assert code == 0, text
        best = max(json.loads(ln)["val_prec1"] for ln in (out / "metrics.jsonl").open())
        accs[(head, feats)] = best
        for f in (
            "config.yaml",
            "classes.txt",
            "best.pt",
            "last.pt",
            "norm.npz",
            "feature_sets.json",
            "curves.png",
        ):
            assert (out / f).exists(), f
    best_single = max(accs[("single", "a")], accs[("single", "b")])
    assert best_single <= 0.75, accs  # each cue alone tells only half the classes apart
    for head in ("txn", "itxn", "fflstm", "attention-clusters"):
        assert accs[(head, "a,b")] >= 0.9 > best_single, (head, accs)
    assert accs[("itxn", "a,b")] >= accs[("txn", "a,b")], accs


def test_eval_predict_and_store_mismatch(feature_store, tmp_path: Path) -> None:
    store, train, val = feature_store
    run = tmp_path / "run"
    code, text = fuse(
        "train",
        "--store",
        str(store),
        "--train",
        str(train),
        "--val",
        str(val),
        "--features",
        "a,b",
        "--head",
        "attention-clusters",
        "--epochs",
        "3",
        "--out",
        str(run),
        "--quiet",
    )
    assert code == 0, text
    code, text = fuse("eval", "--run", str(run), "--store", str(store), "--videos", str(val))
    assert code == 0, text
    assert "eval: 32 videos, Prec@1" in text
    ev = run / "eval-val"
    assert (ev / "confusion.png").exists() and (ev / "per_class.csv").exists()
    rows = list(csv.DictReader(open(ev / "scores.csv")))
    assert len(rows) == 32 and set(rows[0]) >= {"video_id", "label", "class0", "class3"}
    unl = tmp_path / "unlabelled.txt"
    unl.write_text("c0_30.mp4\nc3_31.mp4\n")
    code, text = fuse(
        "predict",
        "--run",
        str(run),
        "--store",
        str(store),
        "--videos",
        str(unl),
        "--out",
        str(tmp_path / "pred.csv"),
    )
    assert code == 0, text
    pred = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert [r["video_id"] for r in pred] == ["c0_30", "c3_31"] and pred[0]["top1"].startswith(
        "class"
    )
    probs = np.array([[float(r[f"class{k}"]) for k in range(K)] for r in pred])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    # a store whose set 'a' was computed differently is refused, naming the key
    other = tmp_path / "other"
    write_set(other, "a", "rgb", ["c0_30"], [0], lambda v, y: np.zeros((5, D)), t=5)
    write_set(other, "b", "audio", ["c0_30"], [0], lambda v, y: np.zeros((3, D)), t=3)
    code, text = fuse("eval", "--run", str(run), "--store", str(other), "--videos", str(val))
    assert code != 0 and "differs" in text and "T: run 6 vs store 5" in text


def test_fuse_option_errors(feature_store, tmp_path: Path) -> None:
    store, train, val = feature_store
    code, text = fuse(
        "train",
        "--store",
        str(store),
        "--train",
        str(train),
        "--features",
        "nope",
        "--head",
        "txn",
        "--out",
        str(tmp_path / "r"),
    )
    assert code != 0 and "nope" in text
    code, text = fuse(
        "train",
        "--store",
        str(store),
        "--train",
        str(train),
        "--features",
        "a",
        "--head",
        "txn",
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "0",
    )
    assert code != 0 and "--epochs must be >= 1" in text


def test_explicit_cuda_without_cuda_is_an_error_not_a_silent_cpu_run() -> None:
    import torch

    from vidfeat.device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_cli_head_choices_match_the_registry() -> None:
    from vidfeat.fusion.heads import HEADS

    head = next(p for p in main.commands["fuse"].commands["train"].params if p.name == "head")
    assert list(head.type.choices) == HEADS.names()
