"""`vidfeat fuse train` runs that outlive one process: Ctrl-C + --resume, and torchrun (DDP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_fusion import write_set

from vidfeat.cli import main
from vidfeat.fusion.data import FusionDataset

K = 4
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two modalities ('a' separates all classes weakly, 'b' two pairs of classes), 64 train
    and 16 val videos: 4 steps per epoch at --batch-size 16."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(3)
    protos_a, protos_b = rng.normal(0, 1, (K, 8)), rng.normal(0, 1, (2, 8))
    ids, labels, split = [], [], []
    for k in range(K):
        for i in range(20):
            ids.append(f"v{k}_{i:02d}")
            labels.append(k)
            split.append("train" if i < 16 else "val")
    write_set(
        root / "store", "a", "rgb", ids, labels, lambda v, y: protos_a[y] + rng.normal(0, 1, (6, 8))
    )
    write_set(
        root / "store",
        "b",
        "audio",
        ids,
        labels,
        lambda v, y: protos_b[y % 2] + rng.normal(0, 1, (6, 8)),
    )
    for name in ("train", "val"):
        rows = [
            f"{v}.mp4,class{y},{v}\n"
            for v, y, s in zip(ids, labels, split, strict=True)
            if s == name
        ]
        (root / f"{name}.csv").write_text("path,label,video_id\n" + "".join(rows))
    return root / "store", root / "train.csv", root / "val.csv"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # these tensors are tiny: a second intra-op thread only adds synchronisation, which on a
    # busy machine costs more than the arithmetic (10-40x slower steps)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fuse_train(store: tuple[Path, Path, Path], out: Path, *extra: str) -> tuple[int, str]:
    s, train, val = store
    args = ["fuse", "train", "--store", str(s), "--train", str(train), "--val", str(val)]
    args += ["--features", "a,b", "--out", str(out), "--batch-size", "16", "--quiet", *extra]
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


# txn: BatchNorm, dropout and temporal augmentation all on, so every source of randomness and
# every piece of state (BN buffers, AdamW moments, schedule position) has to survive the resume
TXN = ("--head", "txn", "--head-opt", "width=16", "--lr", "3e-3")


def test_ctrl_c_mid_epoch_then_resume_equals_an_uninterrupted_run(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text = fuse_train(store, tmp_path / "whole", *TXN, "--epochs", "4")
    assert code == 0, text

    # a real SIGINT, delivered while epoch 2 loads its second batch (its 20th training item)
    get = FusionDataset.__getitem__
    loaded = []

    def interrupting(self: FusionDataset, i: int) -> dict:
        if self.augment and self._epoch == 1:
            loaded.append(i)
            if len(loaded) == 20:
                os.kill(os.getpid(), signal.SIGINT)
        return get(self, i)

    monkeypatch.setattr(FusionDataset, "__getitem__", interrupting)
    cut = tmp_path / "cut"
    code, text = fuse_train(store, cut, *TXN, "--epochs", "4")
    monkeypatch.undo()
    assert len(loaded) == 32 and code == 130, text
    assert "interrupted in epoch 2 after step 2 of 4" in text and "--resume" in text
    state = torch.load(cut / "last.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2) and {"optimizer", "best", "since_best"} <= set(
        state
    )
    assert [r["epoch"] for r in rows(cut)] == [1]

    code, text = fuse_train(store, cut, *TXN, "--epochs", "4", "--resume")
    assert code == 0, text
    assert [r["epoch"] for r in rows(cut)] == [1, 2, 3, 4]
    a, b = weights(tmp_path / "whole"), weights(cut)
    # same batches, same dropout/augmentation draws, same optimiser state: bit-identical
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    for whole, resumed in zip(rows(tmp_path / "whole"), rows(cut), strict=True):
        whole.pop("seconds"), resumed.pop("seconds")
        assert whole == resumed


def test_resume_with_more_epochs_follows_the_new_schedule_and_refuses_model_changes(
    store, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    code, text = fuse_train(store, run, *TXN, "--epochs", "2")
    assert code == 0, text
    first = rows(run)
    norm_before = (run / "norm.npz").read_bytes()

    code, text = fuse_train(store, run, *TXN, "--epochs", "2", "--resume")
    assert code != 0 and "pass --epochs > 2" in text

    other = ("--head", "itxn", "--head-opt", "width=16", "--lr", "3e-3")
    code, text = fuse_train(store, run, *other, "--epochs", "4", "--resume")
    assert code != 0 and "--head (run 'txn', now 'itxn')" in text, text
    code, text = fuse_train(store, run, *TXN, "--epochs", "4", "--lr", "1e-3", "--resume")
    assert code != 0 and "--lr (run 0.003, now 0.001)" in text, text
    code, text = fuse_train(store, run, *TXN[:2], "--head-opt", "width=8", "--resume")
    assert code != 0 and "--head-opt width (run 16, now 8)" in text, text
    assert rows(run) == first  # refused resumes leave the run alone

    code, text = fuse_train(store, run, *TXN, "--epochs", "4", "--resume")
    assert code == 0, text
    got = rows(run)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4] and got[:2] == first
    assert (run / "norm.npz").read_bytes() == norm_before  # reused, not recomputed
    # the cosine now runs over 4 epochs of 4 steps: after epoch 3 it stands at step 12 of 16
    assert got[2]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + np.cos(np.pi * 12 / 16)))
    assert got[3]["lr"] == pytest.approx(0.0, abs=1e-12)


def _free_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one_process(store, tmp_path: Path) -> None:
    # dropout 0 and no augmentation: the only randomness left is the batch order, which the
    # ranks share; so 2 x 8 samples per step must give the single process's 16-sample step
    opts = ("--head", "attention-clusters", "--head-opt", "clusters=4", "--dropout", "0")
    opts += ("--no-augment", "--epochs", "3", "--lr", "3e-3", "--device", "cpu")
    opts += ("--precision", "fp32")  # the comparison is to float32 rounding
    code, text = fuse_train(store, tmp_path / "one", *opts)
    assert code == 0, text

    s, train, val = store
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "vidfeat", "fuse", "train", "--store", str(s), "--train", str(train)]
    cmd += ["--val", str(val), "--features", "a,b", "--out", str(two), "--batch-size", "16"]
    cmd += ["--quiet", *opts]
    proc = subprocess.run(
        cmd, cwd=REPO, env=_free_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("fuse attention-clusters on a,b: best epoch") == 1  # rank 0 only

    one_rows, two_rows = rows(tmp_path / "one"), rows(two)
    assert [r["epoch"] for r in two_rows] == [1, 2, 3]
    a, b = weights(tmp_path / "one"), weights(two)
    # Summing a step's gradient as 2 x 8 samples instead of 16 changes float32 rounding only
    # (observed ~3e-8). 1e-5 is still 300x below one AdamW step (lr 3e-3), so one different
    # batch, lr or missing gradient average would fail this. Exception: score.bias of each
    # attention cluster has a gradient that is zero in exact arithmetic (softmax over time
    # ignores a constant shift), so it is rounding noise that Adam normalises into lr-sized
    # steps, different in any two runs; it has no effect on any output (val_loss below).
    noise_only = {k for k in a if k.endswith("score.bias")}
    assert len(noise_only) == 2
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a if k not in noise_only}
    assert max(diff.values()) < 1e-5, diff
    for r1, r2 in zip(one_rows, two_rows, strict=True):
        assert r1["val_prec1"] == r2["val_prec1"] and r1["train_prec1"] == r2["train_prec1"]
        assert r1["val_loss"] == pytest.approx(r2["val_loss"], abs=1e-5)
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], abs=1e-5)
    assert one_rows[-1]["train_loss"] < one_rows[0]["train_loss"] - 0.03  # it did learn
