"""The Ray engine: same store as the local engine, and a worker killed mid-task loses nothing
and duplicates nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from vidfeat.extract import RunOptions, run_extraction
from vidfeat.extract.fields import FlowFieldsExtractor
from vidfeat.flow import make_method
from vidfeat.store import FeatureStore, verify_store
from vidfeat.videolist import load_list

ray = pytest.importorskip("ray")
# one xdist group: the Ray clusters of this module and test_cluster never run at once
pytestmark = pytest.mark.xdist_group("ray")


class DiesOnce(FlowFieldsExtractor):
    """Kills its worker process the first time it meets ``victim`` (a marker file remembers)."""

    def __init__(self, marker: Path, victim: str, **kw) -> None:
        super().__init__(make_method("farneback"), **kw)
        self.marker, self.victim = str(marker), victim

    def extract(self, record, class_index):
        if record.video_id == self.victim and not os.path.exists(self.marker):
            Path(self.marker).write_text("died")
            os._exit(1)  # the worker dies without cleanup, like an OOM kill
        return super().extract(record, class_index)


@pytest.fixture(scope="module")
def ray_local():
    # this module is not importable in Ray's workers: ship DiesOnce by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_matches_local_and_survives_a_dead_worker(
    ray_local, tiny_synth: Path, tmp_path: Path
) -> None:
    videos = load_list(tiny_synth / "train.csv")
    kw = dict(segments=2, frames=1, short_side=32, bound=20.0)
    local = run_extraction(
        videos,
        FlowFieldsExtractor(make_method("farneback"), **kw),
        tmp_path / "local",
        "f",
        RunOptions(progress=False),
    )
    assert local.done == 12
    victim = videos.records[7].video_id
    ex = DiesOnce(tmp_path / "marker", victim, **kw)
    rep = run_extraction(
        videos,
        ex,
        tmp_path / "ray",
        "f",
        RunOptions(engine="ray", chunk_videos=5, shard_videos=2, progress=False),
    )
    assert (tmp_path / "marker").exists()  # a worker really died mid-task
    assert rep.failed == 0 and rep.done + rep.skipped == 12, rep.summary()
    a = FeatureStore(tmp_path / "local").open_set("f")
    b = FeatureStore(tmp_path / "ray").open_set("f")
    assert a.ids() == b.ids()
    assert not b.duplicates()  # the retry skipped what the dead attempt had completed
    for vid in a.ids():
        assert np.array_equal(a.get(vid)[0], b.get(vid)[0])
    assert verify_store(tmp_path / "ray").ok


def test_network_extraction_on_ray_matches_local(
    ray_local, tiny_synth: Path, tmp_path: Path
) -> None:
    """`extract rgb --checkpoint RUN --engine ray`: every chunk task loads the network and runs
    the batched local extraction on its videos; the store equals a local run's."""
    from vidfeat.extract.network import extract_rgb_features
    from vidfeat.models import TrainConfig
    from vidfeat.train import train

    run = tmp_path / "run"
    cfg = TrainConfig(
        modality="rgb", train=str(tiny_synth / "train.csv"), val=None, arch="stnet",
        backbone="resnet10t", segments=2, test_segments=2, frames=2, size=32, short_side=40,
        epochs=1, batch_size=4, workers=0, optimizer="adamw", lr=1e-3,
        net_options={"txb_width": 16},
    )  # fmt: skip
    train(cfg, run, progress=False, echo=lambda *a: None)
    videos = load_list(tiny_synth / "val.csv")
    common = dict(set_name="rgb", checkpoint=run, segments=3, batch_size=2, device="cpu")
    local = extract_rgb_features(
        videos, tmp_path / "local", opts=RunOptions(progress=False), echo=lambda *a: None, **common
    )
    rep = extract_rgb_features(
        videos,
        tmp_path / "ray",
        opts=RunOptions(engine="ray", chunk_videos=2, progress=False),
        echo=lambda *a: None,
        **common,
    )
    assert local.done == rep.done == 4 and rep.failed == 0, rep.summary()
    a = FeatureStore(tmp_path / "local").open_set("rgb")
    b = FeatureStore(tmp_path / "ray").open_set("rgb")
    assert a.ids() == b.ids() and len(b.shards()) == 2  # one shard per chunk task
    for vid in a.ids():
        assert np.allclose(a.get(vid)[0], b.get(vid)[0], atol=1e-5)
        assert np.allclose(a.get_extra(vid, "scores"), b.get_extra(vid, "scores"), atol=1e-5)
    assert verify_store(tmp_path / "ray").ok
    # resumable like the local engine: a second run has nothing left to do
    again = extract_rgb_features(
        videos,
        tmp_path / "ray",
        opts=RunOptions(engine="ray", chunk_videos=2, progress=False),
        echo=lambda *a: None,
        **common,
    )
    assert again.done == 0 and again.skipped == 4


def test_without_ray_the_message_says_how_to_install(
    tiny_synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from vidfeat.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    res = CliRunner().invoke(
        main,
        ["extract", "flow", "--method", "farneback", "--videos", str(tiny_synth / "val.csv")]
        + ["--store", str(tmp_path), "-T", "2", "-N", "1", "--short-side", "32"]
        + ["--engine", "ray", "--quiet"],
    )
    assert res.exit_code != 0
    assert "pip install 'vidfeat[ray]'" in res.output and "Traceback" not in res.output
