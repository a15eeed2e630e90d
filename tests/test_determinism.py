"""Same inputs, same machine, same results: what the demo's tables rely on.

Two full demo runs on one machine agreed bit for bit (runs' best.pt, stored features and
scores, fusion evals, the ensemble's out-of-fold scores); these guard that nothing of a run
depends on pids, timestamps, shard names, worker completion order or the worker count (the
last did: trained weights followed --workers). Training does depend on torch's intra-op thread
count (the machine's cores, OMP_NUM_THREADS): machines with other core counts train other
weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.store import FeatureStore


def cli(*args: str) -> None:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output


def train_tsn(data: Path, out: Path, workers: int) -> dict[str, torch.Tensor]:
    cli(
        "train", "rgb", "--videos", str(data / "train.csv"), "--val", str(data / "val.csv"),
        "--out", str(out), "--arch", "tsn", "--backbone", "resnet10t", "--segments", "2",
        "--frames", "1", "--size", "48", "--short-side", "56", "--epochs", "2",
        "--batch-size", "4", "--workers", str(workers), "--optimizer", "adamw", "--quiet",
    )  # fmt: skip
    return torch.load(out / "best.pt", weights_only=True)


def test_training_twice_gives_the_same_weights_whatever_the_worker_count(
    tiny_synth: Path, tmp_path: Path
) -> None:
    # augmentation is a function of (seed, epoch, video): not of which worker loads a clip
    a = train_tsn(tiny_synth, tmp_path / "a", workers=2)
    b = train_tsn(tiny_synth, tmp_path / "b", workers=0)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def stored(store: Path, name: str) -> dict[str, np.ndarray]:
    fs = FeatureStore(store).open_set(name)
    return {v: fs.features(v) for v in fs.ids()}


def test_flow_fields_do_not_depend_on_workers_or_completion_order(
    tiny_synth: Path, tmp_path: Path
) -> None:
    sets = []
    for name, workers in (("pool", ["--workers", "2"]), ("inline", ["--timeout", "0"])):
        store = tmp_path / name
        cli(
            "extract", "flow", "--method", "farneback", "--videos",
            str(tiny_synth / "all.csv"), "--store", str(store), "-T", "2", "-N", "2",
            "--short-side", "64", "--quiet", *workers,
        )  # fmt: skip
        sets.append(stored(store, "farneback-fields"))
    a, b = sets
    assert list(a) == list(b) and len(a) == 16
    assert all(np.array_equal(a[v], b[v]) for v in a)
