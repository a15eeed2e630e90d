"""Options of `vidfeat extract rgb|audio` act or are refused: --grid reference takes the
authors' test frames, --crop-size sets the test crop (recorded in set.json), -N is refused where
the network's run fixes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.grid import SegmentGrid
from vidfeat.store import FeatureStore


def cli(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def authors_test_frames(L: int, T: int, seglen: int) -> list[list[int]]:
    """PaddleCV video's test-mode `video_loader`, written out as the authors' reader does."""
    average_dur = int(L / T)
    out = []
    for i in range(T):
        idx = 0
        if average_dur >= seglen:
            idx = (average_dur - seglen) // 2 + i * average_dur
        elif average_dur >= 1:
            idx += i * average_dur
        else:
            idx = i
        out.append([int(jj % L) for jj in range(idx, idx + seglen)])
    return out


@pytest.mark.parametrize(
    "L, T, N", [(300, 25, 5), (250, 25, 5), (101, 7, 5), (12, 25, 5), (3, 4, 2)]
)
def test_reference_grid_is_the_authors_reader(L: int, T: int, N: int) -> None:
    g = SegmentGrid(T, N, "reference").sample(L, 25.0)
    assert g.indices.tolist() == authors_test_frames(L, T, N)
    assert g.indices.shape == (T, N) and g.start.shape == (T,)


def test_grid_and_crop_size_act_and_n_is_refused(
    tiny_rgb_run: Path, tiny_synth: Path, tmp_path
) -> None:
    val = tiny_synth / "val.csv"
    base = ["extract", "rgb", "--checkpoint", tiny_rgb_run, "--videos", val, "-T", "3", "--quiet",
            "--workers", "0"]  # fmt: skip
    assert cli(*base, "--store", tmp_path / "a")[0] == 0
    code, text = cli(*base, "--store", tmp_path / "b", "--grid", "reference", "--crop-size", "40")
    assert code == 0, text
    a = FeatureStore(tmp_path / "a").open_set("rgb")
    b = FeatureStore(tmp_path / "b").open_set("rgb")
    assert a.config["size"] == 32 and a.config["grid_mode"] == "test"
    assert b.config["size"] == 40 and b.config["grid_mode"] == "reference"
    vid = a.ids()[0]
    n = int(a.attrs(vid)["num_frames"])
    assert b.attrs(vid)["frame_indices"].tolist() == authors_test_frames(n, 3, 2)
    assert not np.allclose(a.features(vid), b.features(vid))
    code, text = cli(*base, "--store", tmp_path / "c", "-N", "3")
    assert code != 0 and "takes no -N" in text
    code, text = cli(*base, "--store", tmp_path / "c", "--crop-size", "64")
    assert code != 0 and "larger than the run's short side 48" in text
    code, text = cli("extract", "audio", "--videos", val, "--store", tmp_path / "d", "-N", "2",
                     "--random-init")  # fmt: skip
    assert code != 0 and "takes no -N" in text


def test_flow_options_an_existing_fields_set_fixes_are_refused(tiny_synth: Path, tmp_path) -> None:
    """The fields set's own options are used: one asked otherwise is refused, naming the stored
    value and the asked one (a network extraction never silently drops them)."""
    from vidfeat.errors import ConfigError
    from vidfeat.extract.fields import fields_extractor_for

    store = tmp_path / "store"
    val = tiny_synth / "val.csv"
    code, text = cli("extract", "flow", "--method", "farneback", "--videos", val, "--store",
                     store, "-T", "2", "-N", "1", "--short-side", "32", "--quiet")  # fmt: skip
    assert code == 0, text
    ok = fields_extractor_for(store, "farneback-fields", "farneback", {}, 2, 1, 256, 20.0,
                              given={"short_side": 32, "frames": 1})  # fmt: skip
    assert ok.short_side == 32
    with pytest.raises(ConfigError, match=r"short_side: set has 32, asked 48.*bound: set has 20.0"):
        fields_extractor_for(store, "farneback-fields", "farneback", {}, 2, 1, 48, 5.0,
                             given={"short_side": 48, "bound": 5.0})  # fmt: skip
    with pytest.raises(ConfigError, match=r"levels: set has 3, asked 2"):
        fields_extractor_for(store, "farneback-fields", "farneback", {"levels": 2}, 2, 1, 32,
                             20.0, given={"levels": 2})  # fmt: skip
    code, text = cli("extract", "flow", "--method", "farneback", "--videos", val, "--store",
                     store, "--crop-size", "32")  # fmt: skip
    assert code != 0 and "--crop-size applies with --checkpoint" in text


def test_float16_of_network_features_never_reaches_the_uint8_fields_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`extract flow --checkpoint --float16` stores the network's features as float16; the
    fields set it fills first keeps its uint8 identity, so a later run without --float16 can
    use the same fields."""
    import vidfeat.extract as extract_mod
    from vidfeat.extract import RunOptions
    from vidfeat.extract.fields import FlowFieldsExtractor, ensure_flow_fields
    from vidfeat.flow import make_method
    from vidfeat.report import Report
    from vidfeat.videolist import VideoList

    seen = []
    monkeypatch.setattr(
        extract_mod,
        "run_extraction",
        lambda videos, ex, root, name, opts, echo: seen.append(opts) or Report(),
    )
    ex = FlowFieldsExtractor(make_method("dis"), segments=2, frames=1, short_side=32, bound=20)
    opts = RunOptions(float16=True, limit=3, retry_failed=True, overwrite=True, progress=False)
    videos = VideoList(tmp_path / "l.csv", [], [], "generic")
    ensure_flow_fields(videos, tmp_path, "dis-fields", ex, opts, echo=lambda s: None)
    (got,) = seen
    assert not got.float16 and got.limit is None and not got.retry_failed and not got.overwrite
