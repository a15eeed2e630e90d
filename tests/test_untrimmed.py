"""Untrimmed video (issue 21): the snippets and windows grids, their time convention, and
`extract rgb|flow|audio --grid snippets|windows` streamed row by row into ``(L, D)`` sets, on
real H.264/AAC files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.conftest import moving_frames, tone
from vidfeat.cli import main
from vidfeat.grid import RowGrid, frames_at_fps
from vidfeat.store import FeatureStore
from vidfeat.synth import write_mp4

# --------------------------------------------------------------------------- the grids


def mmaction_untrimmed(total: int, clip_len: int, interval: int) -> np.ndarray:
    """mmaction2's ``UntrimmedSampleFrames`` as its documentation states it: clip centres
    ``interval // 2, + interval, ...`` below ``total``; each clip ``clip_len`` frames around
    its centre, clamped to the video."""
    centres = np.arange(interval // 2, total, interval)
    offsets = np.arange(-(clip_len // 2), clip_len - clip_len // 2)
    return np.clip(centres[:, None] + offsets[None, :], 0, total - 1)


@pytest.mark.parametrize("L", [9, 16, 17, 100, 1001])
@pytest.mark.parametrize(("N", "S"), [(1, 16), (5, 16), (4, 8), (3, 1)])
def test_snippets_are_mmaction2_untrimmed_sample_frames(L: int, N: int, S: int) -> None:
    g = RowGrid("snippets", S, frames=N).sample(L, 30.0)
    want = mmaction_untrimmed(L, N, S)
    assert np.array_equal(g.indices, want)
    assert g.T == len(want) == -(-(L - S // 2) // S)  # the last rows are never dropped
    assert g.indices.max() <= L - 1


def test_a_video_too_short_for_any_snippet_still_gets_one_row() -> None:
    g = RowGrid("snippets", 16, frames=5).sample(5, 30.0)
    assert g.T == 1 and np.array_equal(g.indices, [[0, 1, 2, 3, 4]])  # centred on frame 2


@pytest.mark.parametrize(("L", "W", "S"), [(16, 16, 4), (17, 16, 4), (20, 16, 4), (100, 16, 4),
                                           (1000, 64, 64), (65, 64, 64)])  # fmt: skip
def test_windows_are_complete_windows_every_stride(L: int, W: int, S: int) -> None:
    g = RowGrid("windows", S, window=W).sample(L, 25.0)
    assert g.T == (L - W) // S + 1
    starts = np.arange(g.T) * S
    assert np.array_equal(g.indices, starts[:, None] + np.arange(W))
    assert g.padded == 0
    # the time convention: a window starting at s has centre (s + W/2)/fps ...
    assert np.allclose(g.centre, (starts + W / 2) / 25.0)
    assert np.allclose(g.start, starts / 25.0) and np.allclose(g.end, (starts + W) / 25.0)
    # ... which ActionFormer maps back to row s/S with t*fps/S - W/(2S)
    assert np.allclose(g.centre * 25.0 / S - W / (2 * S), np.arange(g.T))


def test_a_video_shorter_than_the_window_is_one_padded_window() -> None:
    g = RowGrid("windows", 4, window=16).sample(10, 25.0)
    assert g.T == 1 and g.padded == 6
    assert np.array_equal(g.indices[0], [*range(10), *[9] * 6])
    assert g.end[0] == pytest.approx(10 / 25.0)  # its last frame's end


def test_row_times_follow_the_one_convention() -> None:
    g = RowGrid("snippets", 16, frames=5).sample(100, 20.0)
    first, last = g.indices.min(1), g.indices.max(1)
    assert np.allclose(g.start, first / 20.0) and np.allclose(g.end, (last + 1) / 20.0)
    assert np.allclose(g.centre, (g.start + g.end) / 2)
    assert np.allclose(g.times, np.stack([g.start, g.end, g.centre], 1))


def test_frames_at_fps_take_the_nearest_frame_by_timestamp() -> None:
    # 30 fps frames, one dropped (frame times jump at 0.5 s): nearest by time, not by rank
    t = np.concatenate([np.arange(15) / 30, (np.arange(16, 30)) / 30])
    got = frames_at_fps(len(t), 30.0, 10.0, t)
    want = [int(np.argmin(np.abs(t - k / 10))) for k in range(len(got))]
    assert got.tolist() == want
    assert len(got) == int(np.ceil((t[-1] + 1 / 30) * 10 - 1e-9))
    g = RowGrid("windows", 2, window=4, fps=10.0).sample(len(t), 30.0, t)
    assert g.fps == 10.0 and g.num_frames == len(got)
    assert np.array_equal(g.decoded, got[g.indices])


def test_grid_options_are_checked() -> None:
    from vidfeat.errors import ConfigError

    for bad in (
        dict(mode="snippets", stride=0),
        dict(mode="windows", stride=4, window=0),
        dict(mode="snippets", stride=4, fps=-1.0),
        dict(mode="blocks", stride=4),
    ):
        with pytest.raises(ConfigError):
            RowGrid(**bad)


# --------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real H.264/AAC clips (90 and 47 frames at 15 fps, 96x128) and a list of them."""
    d = tmp_path_factory.mktemp("untrimmed")
    write_mp4(d / "a.mp4", moving_frames(90, h=96, w=128, seed=5), 15,
              tone(6.0, 16000, 440.0), 16000, gop=12)  # fmt: skip
    write_mp4(d / "b.mp4", moving_frames(47, h=96, w=128, seed=6), 15,
              tone(3.2, 16000, 660.0), 16000)  # fmt: skip
    (d / "list.csv").write_text("path,label\na.mp4,c0\nb.mp4,c1\n")
    return d


def _run(root: Path, arch: str, modality: str = "rgb", frames: int = 1) -> Path:
    """A run folder of a small ``arch`` network with seeded random weights."""
    from vidfeat.models import TrainConfig, build_model
    from vidfeat.videolist import write_classes

    run = root / f"{modality}-{arch}"
    run.mkdir()
    extra = {"method": "farneback"} if modality == "flow" else {}
    cfg = TrainConfig(modality=modality, train="list.csv", val=None, arch=arch,
                      backbone="resnet10t", frames=frames, size=48, short_side=64,
                      net_options={}, **extra)  # fmt: skip
    torch.manual_seed(0)
    net = build_model(cfg, 3)
    (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_classes(run / "classes.txt", ["c0", "c1", "c2"])
    torch.save(net.state_dict(), run / "best.pt")
    return run


def _vidfeat(*args: str) -> str:
    r = CliRunner().invoke(main, [*map(str, args), "--workers", "0", "--timeout", "0", "-q"])
    assert r.exit_code == 0, r.output
    return r.output


def _model(run: Path):
    from vidfeat.models.build import load_trained

    return load_trained(run).model.eval()


def test_rgb_snippets_are_the_network_on_each_row_frames(media: Path, tmp_path: Path) -> None:
    """Every stored row equals the run's network on that row's decoded, resized, centre-cropped
    and normalised frame (TSN: one frame per row); scores are its softmax."""
    from vidfeat.decode import read_frames

    run = _run(tmp_path, "tsn")
    store = tmp_path / "store"
    _vidfeat("extract", "rgb", "--checkpoint", run, "--videos", media / "list.csv", "--store",
             store, "--grid", "snippets", "--stride", "16", "--batch-size", "3",
             "--precision", "fp32", "--device", "cpu")  # fmt: skip
    fs = FeatureStore(store).open_set("rgb")
    assert fs.config["grid"] == {"mode": "snippets", "stride": 16, "frames": 1, "fps": None}
    assert fs.config["feature_shape"] == [-1, 512]
    model = _model(run)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for vid, L in (("a", 90), ("b", 47)):
        rows = fs.rows(vid)
        want_idx = mmaction_untrimmed(L, 1, 16)
        assert np.array_equal(rows["frame_indices"], want_idx)
        assert np.allclose(rows["centre"], (want_idx[:, 0] + 0.5) / 15)
        frames = read_frames(media / f"{vid}.mp4", want_idx[:, 0], short_side=64)
        h, w = frames.shape[1:3]
        crop = frames[:, (h - 48) // 2 : (h - 48) // 2 + 48, (w - 48) // 2 : (w - 48) // 2 + 48]
        x = ((crop.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)[:, None]
        with torch.no_grad():
            f = model.forward_features(torch.from_numpy(np.ascontiguousarray(x)))
            sc = torch.softmax(model.forward_head(f), 1).numpy()
        got = fs.features(vid)
        assert got.shape == (len(want_idx), 512)
        assert np.abs(got - f[:, 0].numpy()).max() <= 1e-4 * np.abs(got).max()
        assert np.allclose(fs.get_extra(vid, "scores"), sc, atol=1e-5)
        assert (
            fs.attrs(vid)["num_rows"] == len(want_idx)
            and fs.attrs(vid)["label"] == f"c{vid == 'b':d}"
        )


def test_every_modality_shares_the_rows_of_a_video(media: Path, tmp_path: Path) -> None:
    """rgb (StNet, 3 frames a row), flow fields and audio on one grid: the same L and the same
    row centres, so the sets align row for row."""
    from vidfeat.audio import VGGish

    run = _run(tmp_path, "stnet", frames=3)
    torch.manual_seed(0)
    weights = tmp_path / "vggish.pth"
    torch.save(VGGish().state_dict(), weights)
    store = tmp_path / "store"
    grid = ("--grid", "windows", "--window", "3", "--stride", "4")
    lst = ("--videos", media / "list.csv", "--store", store)
    _vidfeat("extract", "rgb", "--checkpoint", run, *lst, *grid)
    _vidfeat("extract", "flow", "--method", "farneback", "--short-side", "64", *lst, *grid)
    _vidfeat("extract", "audio", "--checkpoint", weights, *lst, *grid)
    sets = FeatureStore(store)
    for vid in ("a", "b"):
        rows = {s: sets.open_set(s).rows(vid) for s in ("rgb", "farneback-fields", "audio")}
        L = (90 if vid == "a" else 47) - 3
        for r in rows.values():
            assert len(r["centre"]) == L // 4 + 1
            assert np.array_equal(r["frame_indices"], rows["rgb"]["frame_indices"])
            assert np.array_equal(r["centre"], rows["rgb"]["centre"])
    fields = sets.open_set("farneback-fields").features("a")
    assert fields.shape == (22, 3, 2, 64, 86) and fields.dtype == np.uint8
    assert sets.open_set("audio").features("b").shape == (12, 128)


def test_flow_rows_are_the_pairs_of_each_row_frame(media: Path, tmp_path: Path) -> None:
    """A fields row holds, for each row frame f, the quantised flow of (f, f+1) (the last
    frame pairs with itself), as the method computes it on the decoded frames."""
    from vidfeat.decode import read_frames
    from vidfeat.flow import configure, quantize

    store = tmp_path / "store"
    _vidfeat("extract", "flow", "--method", "farneback", "--videos", media / "list.csv",
             "--store", store, "--short-side", "64", "--grid", "snippets", "--stride", "4",
             "-N", "2")  # fmt: skip
    fs = FeatureStore(store).open_set("farneback-fields")
    q = fs.features("b")
    idx = mmaction_untrimmed(47, 2, 4)  # centres 2, 6, ..., 46: rows [1, 2] ... [45, 46]
    assert np.array_equal(fs.rows("b")["frame_indices"], idx)
    method = configure("farneback", {}, None)
    method.setup()
    frames = read_frames(media / "b.mp4", np.arange(47), short_side=64, gray=True)
    for r, row in enumerate(idx):
        for j, f in enumerate(row):
            want = quantize(method.calc(frames[f], frames[min(f + 1, 46)]).transpose(2, 0, 1), 20.0)
            assert np.abs(q[r, j].astype(int) - want.astype(int)).max() <= 1
    assert set(np.unique(q[-1, 1])) <= {127, 128}  # frame 46 with itself: zero flow (127.5)
    assert np.ptp(q[-1, 0].astype(int)) > 10


def test_audio_rows_are_one_example_centred_on_each_row(media: Path, tmp_path: Path) -> None:
    """The streamed examples equal VGGish on the whole-file examples at the row centres."""
    from vidfeat.audio import VGGish, grid_examples_from_file, load_vggish_weights

    torch.manual_seed(1)
    weights = tmp_path / "vggish.pth"
    torch.save(VGGish().state_dict(), weights)
    store = tmp_path / "store"
    _vidfeat("extract", "audio", "--checkpoint", weights, "--videos", media / "list.csv",
             "--store", store, "--grid", "snippets", "--stride", "8", "--batch-size", "5",
             "--precision", "fp32", "--device", "cpu")  # fmt: skip
    fs = FeatureStore(store).open_set("audio")
    net = VGGish()
    load_vggish_weights(net, weights)
    for vid in ("a", "b"):
        centres = fs.rows(vid)["centre"]
        ex, has, _ = grid_examples_from_file(media / f"{vid}.mp4", centres)
        with torch.no_grad():
            want = net.eval().forward_features(torch.from_numpy(ex[:, None][None])).numpy()[0]
        assert has and fs.attrs(vid)["has_audio"] is True
        assert np.abs(fs.features(vid) - want).max() <= 1e-4 * np.abs(want).max()


def test_fps_takes_frames_at_that_rate(media: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, "tsn")
    store = tmp_path / "store"
    _vidfeat("extract", "rgb", "--checkpoint", run, "--videos", media / "list.csv", "--store",
             store, "--grid", "windows", "--window", "1", "--stride", "2", "--fps", "5",
             "--name", "r5")  # fmt: skip
    fs = FeatureStore(store).open_set("r5")
    assert fs.config["grid"]["fps"] == 5.0
    a = fs.attrs("a")
    assert a["grid_fps"] == 5.0 and a["fps"] == pytest.approx(15.0) and a["grid_frames"] == 30
    rows = fs.rows("a")
    assert len(rows["centre"]) == 15
    assert np.allclose(rows["centre"], (np.arange(15) * 2 + 0.5) / 5)


def test_a_video_that_breaks_mid_stream_leaves_no_half_video(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode error after some rows were written: the video is a failure, its rows are
    not in the store, the other video is complete, and a rerun retries only it."""
    import vidfeat.rowclips as rc

    run = _run(tmp_path, "tsn")
    store = tmp_path / "store"
    real = rc.RGBRows.batches

    def breaking(self, path, info, sample, rows):
        for k, item in enumerate(real(self, path, info, sample, rows)):
            if Path(path).name == "a.mp4" and k == 2:
                raise OSError("simulated read error")
            yield item

    monkeypatch.setattr(rc.RGBRows, "batches", breaking)
    args = ("extract", "rgb", "--checkpoint", run, "--videos", media / "list.csv", "--store",
            store, "--grid", "snippets", "--stride", "4", "--batch-size", "2")  # fmt: skip
    r = CliRunner().invoke(main, [*map(str, args), "--workers", "0", "--timeout", "0", "-q"])
    assert r.exit_code != 0 and "1 failed" in r.output
    fs = FeatureStore(store).open_set("rgb")
    assert fs.ids() == ["b"]
    assert [f["video_id"] for f in fs.failures()] == ["a"]
    assert "simulated read error" in fs.failures()[0]["message"]
    monkeypatch.setattr(rc.RGBRows, "batches", real)
    out = _vidfeat(*args)
    assert "1 done, 1 skipped" in out
    assert sorted(FeatureStore(store).open_set("rgb").ids()) == ["a", "b"]


def test_a_set_keeps_one_grid(media: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    base = ("extract", "flow", "--method", "farneback", "--videos", media / "list.csv",
            "--store", store, "--short-side", "64")  # fmt: skip
    _vidfeat(*base, "--grid", "snippets", "--stride", "16", "--limit", "1")
    r = CliRunner().invoke(main, [*map(str, base), "--grid", "snippets", "--stride", "8", "-q"])
    assert r.exit_code != 0 and "grid" in r.output and "Traceback" not in r.output


def test_grid_options_refused_where_they_do_not_apply(media: Path, tmp_path: Path) -> None:
    base = ["extract", "flow", "--method", "farneback", "--videos", str(media / "list.csv"),
            "--store", str(tmp_path / "s")]  # fmt: skip
    for extra, says in (
        (["--grid", "snippets"], "needs --stride"),
        (["--grid", "windows", "--stride", "4"], "needs --window"),
        (["--grid", "snippets", "--stride", "4", "--window", "8"], "--window applies to"),
        (["--stride", "4"], "apply to --grid snippets|windows"),
    ):
        r = CliRunner().invoke(main, [*base, *extra, "-q"])
        assert r.exit_code != 0 and says in " ".join(r.output.split()), (extra, r.output)
        assert "Traceback" not in r.output


def test_float16_rows_and_json_of_set(media: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, "tsn")
    store = tmp_path / "store"
    _vidfeat("extract", "rgb", "--checkpoint", run, "--videos", media / "list.csv", "--store",
             store, "--grid", "snippets", "--stride", "16", "--float16")  # fmt: skip
    fs = FeatureStore(store).open_set("rgb")
    assert fs.features("a").dtype == np.float16
    conf = json.loads((store / "rgb" / "set.json").read_text())
    assert conf["grid"]["mode"] == "snippets" and conf["N"] == 1


def test_fusion_refuses_untrimmed_rows_and_names_the_exports(tmp_path: Path) -> None:
    """The fusion heads classify clips on T segments: a set of rows is refused by name, with
    the export layouts as the way out, rather than cut or resampled silently."""
    from vidfeat.store import ShardWriter

    store = FeatureStore(tmp_path / "store")
    config = {"modality": "rgb", "grid": {"mode": "snippets", "stride": 16, "frames": 1,
              "fps": None}, "feature_shape": [-1, 8], "dtype": "float32"}  # fmt: skip
    store.ensure_set("rgb", config)
    with ShardWriter(store.set_dir("rgb"), "j") as w:
        for k, L in enumerate((3, 40)):
            w.add(f"v{k}", np.ones((L, 8), np.float32), {"label": f"c{k}"})
    lst = tmp_path / "list.csv"
    lst.write_text("path,label,video_id\nv0.mp4,c0,v0\nv1.mp4,c1,v1\n")
    r = CliRunner().invoke(main, ["fuse", "train", "--store", str(tmp_path / "store"),
                                  "--features", "rgb", "--head", "single", "--train", str(lst),
                                  "--val", str(lst), "--out", str(tmp_path / "run")])  # fmt: skip
    text = " ".join(r.output.split())
    assert r.exit_code != 0 and "holds untrimmed rows" in text, r.output
    assert "--layout actionformer|bmn|gtad" in text and "Traceback" not in r.output
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_flow_network_on_rows_reads_fields_it_never_stores(media: Path, tmp_path: Path) -> None:
    """`extract flow --checkpoint --grid snippets` feeds each batch's fields straight into the
    network: no fields set appears unless --keep-fields, whose fields equal a fields-only
    extraction; the features equal the network on the centre crop of those fields."""
    from vidfeat.flow import to_network_input

    run = _run(tmp_path, "tsn", modality="flow", frames=2)
    store = tmp_path / "store"
    grid = ("--grid", "snippets", "--stride", "16", "--precision", "fp32", "--device", "cpu")
    base = ("extract", "flow", "--method", "farneback", "--videos", media / "list.csv",
            "--store", store)  # fmt: skip
    _vidfeat(*base, "--checkpoint", run, *grid, "--name", "net")
    assert sorted(FeatureStore(store).sets()) == ["net"]
    _vidfeat(*base, "--checkpoint", run, *grid, "--name", "net2", "--keep-fields",
             "--fields-name", "kept")  # fmt: skip
    _vidfeat(*base, *grid[:4], "-N", "2", "--short-side", "64", "--name", "alone")
    st = FeatureStore(store)
    assert st.open_set("net").config["grid"] == st.open_set("alone").config["grid"]
    model = _model(run)
    for vid in ("a", "b"):
        kept, alone = st.open_set("kept").features(vid), st.open_set("alone").features(vid)
        assert np.array_equal(kept, alone) and kept.shape[1:3] == (2, 2)
        h, w = alone.shape[-2:]
        crop = alone[..., (h - 48) // 2 : (h - 48) // 2 + 48, (w - 48) // 2 : (w - 48) // 2 + 48]
        x = to_network_input(crop).reshape(len(alone), 1, 4, 48, 48)
        with torch.no_grad():
            want = model.forward_features(torch.from_numpy(x))[:, 0].numpy()
        for name in ("net", "net2"):
            got = st.open_set(name).features(vid)
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_readers_take_videos_of_1_to_100000_rows(tmp_path: Path) -> None:
    """FeatureSet, its index, store info and verify, and the export read a set whose videos
    hold 1 and 100,000 rows."""
    from vidfeat.store import ShardWriter, format_info, store_info, verify_store

    store = FeatureStore(tmp_path / "store")
    grid = RowGrid("snippets", 16, frames=1)
    store.ensure_set("rgb", {"modality": "rgb", "grid": grid.config(), "feature_shape": [-1, 64],
                             "dtype": "float32"})  # fmt: skip
    with ShardWriter(store.set_dir("rgb"), "j") as w:
        for vid, frames in (("one", 1), ("long", 1_600_000)):
            g = grid.sample(frames, 25.0)
            feats = np.random.default_rng(frames).standard_normal((g.T, 64)).astype(np.float32)
            w.add(vid, feats, {"grid_fps": 25.0, "num_rows": g.T},
                  extra={"frame_indices": g.indices, "times": g.times})  # fmt: skip
    fs = FeatureStore(tmp_path / "store").open_set("rgb")
    assert sorted(fs.lengths().tolist()) == [1, 100_000]
    assert fs.features("long").shape == (100_000, 64) and fs.features("one").shape == (1, 64)
    assert fs.rows("long")["centre"][-1] == pytest.approx((1_599_992 + 0.5) / 25.0)
    assert "rows per video: min 1, median 50,000, 90% 90,000, max 100,000" in format_info(
        store_info(tmp_path / "store")
    )
    assert verify_store(tmp_path / "store").ok
    _ok_export = CliRunner().invoke(main, ["store", "export", str(tmp_path / "store"), "--set",
                                           "rgb", "--layout", "actionformer", "--out",
                                           str(tmp_path / "af"), "-q"])  # fmt: skip
    assert _ok_export.exit_code == 0, _ok_export.output
    assert np.load(tmp_path / "af" / "long.npy").shape == (100_000, 64)
