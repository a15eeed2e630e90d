"""The Ray engine: same store as the local engine, and a worker killed mid-task loses nothing
and duplicates nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from vidfeat.extractors import FlowFieldsExtractor
from vidfeat.flow import make_method
from vidfeat.runner import RunOptions, run_extraction
from vidfeat.store import FeatureStore, verify_store
from vidfeat.videolist import load_list

ray = pytest.importorskip("ray")


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
