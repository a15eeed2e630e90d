"""`vidfeat store export --layout actionformer|bmn|gtad`: untrimmed row sets as the
localisation codebases read them, row sets concatenated only on one grid, mmaction2's
resampling against a reference, resume, full disk / file-size limit, read-only stores."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.export import export_set
from vidfeat.layouts import pool_rows
from vidfeat.store import FeatureStore, ShardWriter

ROOT = Path(__file__).parents[1]
WINDOWS = {"mode": "windows", "stride": 4, "window": 16, "fps": 30.0}
SNIPPETS = {"mode": "snippets", "stride": 8, "frames": 5, "fps": None}
# L = 1, L < 100 steps, L >> 100 steps, and an id that is no plain file name
LENGTHS = {"a": 1, "b": 7, "c": 5000, "sp ace": 3}
DIMS = {"rgb": 6, "flow": 4}


def rows_of(grid: dict, n: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """frame_indices (L, span) and times (L, 3) as the contract defines them: frame k spans
    [k/fps, (k+1)/fps); a row from its first frame's start to its last frame's end."""
    stride = grid["stride"]
    if grid["mode"] == "windows":
        first = np.arange(n) * stride
        idx = first[:, None] + np.arange(grid["window"])
    else:  # N frames in the middle of each stride
        first = np.arange(n) * stride + (stride - grid["frames"]) // 2
        idx = first[:, None] + np.arange(grid["frames"])
    start, end = idx[:, 0] / fps, (idx[:, -1] + 1) / fps
    return idx.astype(np.int64), np.stack([start, end, (start + end) / 2], axis=1)


def add_set(st: FeatureStore, name: str, grid: dict | None, dim: int, lengths: dict, **kw):
    """A row set (``grid``) of ``lengths`` videos, or a trimmed one (grid None); its arrays."""
    rng = np.random.default_rng(len(name) * 100 + dim)
    cfg = {"modality": name, "feature_shape": [-1, dim], "dtype": "float32"}
    cfg |= {"classes": ["x", "y", "z"]} if kw.get("scores") else {}
    st.ensure_set(name, cfg | ({"grid": grid} if grid else {}))
    fps = (grid or {}).get("fps") or 25.0
    data = {}
    with ShardWriter(st.set_dir(name), "j", compression=None, float16=kw.get("f16", False)) as w:
        for vid, n in lengths.items():
            x = (rng.standard_normal((n, dim)) * 3).astype(np.float32)
            idx, times = rows_of(grid or WINDOWS, n, fps)
            if kw.get("shift") == vid:  # rows another set does not share: a frame later
                idx, times = idx.copy(), times.copy()
                idx[3:] += 1
                times[3:] += 1 / fps
            attrs = {"fps": 25.0 if not (grid or {}).get("fps") else 29.97, "grid_fps": fps,
                     "duration": 12.5, "num_rows": n, "video_id": vid}  # fmt: skip
            extra = {"times": times, "frame_indices": idx}
            if kw.get("scores"):  # softmax per row
                extra["scores"] = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
                data[f"{vid}.scores"] = extra["scores"]
            w.add(vid, x, attrs, extra=extra)
            data[vid] = x
    return data


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("rowstore")
    st = FeatureStore(root)
    data = {name: add_set(st, name, WINDOWS, d, LENGTHS) for name, d in DIMS.items()}
    add_set(st, "rgbonly", WINDOWS, 6, {**LENGTHS, "extra": 4})
    add_set(st, "flowbad", WINDOWS, 4, {"a": 1, "b": 6, "c": 5000}, shift="c")
    data["snip"] = add_set(st, "snip", SNIPPETS, 3, {"s1": 9, "s2": 1})
    add_set(st, "trim", None, 6, {"a": 4})
    st.ensure_set("fields", {"grid": WINDOWS, "feature_shape": [-1, 4, 2, -1, -1]})
    return root, data


def run(*args: str | Path) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["store", "export", *map(str, args), "--quiet"])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def manifest(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def both(data: dict, vid: str) -> np.ndarray:
    return np.concatenate([data["rgb"][vid], data["flow"][vid]], axis=1)


# --------------------------------------------------------------------------- actionformer


def test_actionformer_files_and_config_put_every_row_at_its_stored_time(store, tmp_path):
    root, data = store
    out = tmp_path / "af"
    code, stdout, err = run(root, "--set", "rgb,flow", "--layout", "actionformer", "--out", out)
    assert code == 0, err
    assert stdout.startswith(f"export: {len(LENGTHS)} written, 0 skipped")
    cfg = yaml.safe_load((out / "actionformer.yaml").read_text())["dataset"]
    want = {"feat_stride": 4, "num_frames": 16, "default_fps": 30.0, "input_dim": 10}
    assert cfg == want | {"file_prefix": "", "file_ext": ".npy", "feat_folder": str(out.resolve())}
    rows = manifest(out / "manifest.csv")
    st = FeatureStore(root).open_set("rgb")
    for vid, n in LENGTHS.items():
        # as libs/datasets/thumos14.py loads a video and puts a time (seconds) on its rows
        path = os.path.join(cfg["feat_folder"], cfg["file_prefix"] + vid + cfg["file_ext"])
        if vid == "sp ace":  # no plain file name: escaped, the manifest maps it
            assert not os.path.exists(path) and rows[vid]["file"] == "sp%20ace.npy"
            path = str(out / rows[vid]["file"])
        feats = np.load(path)
        assert feats.dtype == np.float32 and np.array_equal(feats, both(data, vid))
        offset = 0.5 * cfg["num_frames"] / cfg["feat_stride"]
        centres = st.get_extra(vid, "times")[:, 2]
        grid_rows = centres * cfg["default_fps"] / cfg["feat_stride"] - offset
        np.testing.assert_allclose(grid_rows, np.arange(n), atol=1e-9)
        r = rows[vid]
        assert (r["L"], r["C"], r["source_L"], r["sets"]) == (str(n), "10", str(n), "rgb+flow")
        assert json.loads(r["grid"]) == WINDOWS and float(r["fps"]) == 29.97
    assert "note: 1 ids are no plain file names ('sp ace')" in err


def test_actionformer_prefix_and_a_grid_without_fps(store, tmp_path):
    """Snippets of N = 5 frames in the middle of every S = 8: ActionFormer's num_frames is what
    puts their stored centres at the rows (7, not 5), and the fps is each video's own."""
    root, data = store
    out = tmp_path / "af"
    code, _, err = run(root, "--set", "snip", "--layout", "actionformer", "--out", out,
                       "--prefix", "v_")  # fmt: skip
    assert code == 0, err
    cfg = yaml.safe_load((out / "actionformer.yaml").read_text())["dataset"]
    assert "default_fps" not in cfg and cfg["file_prefix"] == "v_" and cfg["num_frames"] == 7
    assert "so actionformer.yaml has num_frames 7, not the grid's 5" in err
    st = FeatureStore(root).open_set("snip")
    for vid, x in data["snip"].items():
        assert np.array_equal(np.load(out / f"v_{vid}.npy"), x)
        fps = float(manifest(out / "manifest.csv")[vid]["grid_fps"])  # the annotation's fps
        centres = st.get_extra(vid, "times")[:, 2]
        got = centres * fps / cfg["feat_stride"] - 0.5 * cfg["num_frames"] / cfg["feat_stride"]
        np.testing.assert_allclose(got, np.arange(len(x)), atol=1e-9)


# --------------------------------------------------------------------------- bmn


def reference_pool(x: np.ndarray, steps: int) -> np.ndarray:
    """mmaction2's pooling as its docs describe it, in float64: the rows as a piecewise-linear
    function of the row index, sampled at 3 evenly spaced points in each of ``steps`` equal
    bins of [1e-4, L-1-1e-4], averaged; a single row repeated."""
    x = x.astype(np.float64)
    if len(x) == 1:
        return np.repeat(x, steps, axis=0)
    lo, hi = 1e-4, len(x) - 1 - 1e-4
    width = (hi - lo) / steps
    pos = lo + (np.arange(steps)[:, None] + np.arange(3)[None, :] / 3) * width
    cols = [np.interp(pos.ravel(), np.arange(len(x)), x[:, j]) for j in range(x.shape[1])]
    return np.stack(cols, axis=1).reshape(steps, 3, -1).mean(axis=1)


@pytest.mark.parametrize("steps", [None, 16])
def test_bmn_csv_is_the_resampled_rows_mmaction2_reads(store, tmp_path, steps):
    root, data = store
    out = tmp_path / "bmn"
    extra = ("--steps", str(steps)) if steps else ()
    code, _, err = run(root, "--set", "rgb,flow", "--layout", "bmn", "--out", out, *extra)
    assert code == 0, err
    want_steps = steps or 100
    rows = manifest(out / "manifest.csv")
    for vid in ["a", "b", "c"]:  # L = 1, L < steps, L >> steps
        path = out / f"{vid}.csv"
        assert path.read_text().split("\n", 1)[0] == ",".join(f"f{j}" for j in range(10))
        plain = np.loadtxt(path, delimiter=",", skiprows=1)
        assert plain.shape == (want_steps, 10)
        # mmaction2's LoadLocalizationFeature, then transposed to (C, steps)
        raw = np.loadtxt(path, dtype=np.float32, delimiter=",", skiprows=1)
        assert np.transpose(raw, (1, 0)).shape == (10, want_steps)
        ref = np.concatenate(
            [reference_pool(data[s][vid], want_steps) for s in ("rgb", "flow")], axis=1
        )
        np.testing.assert_allclose(raw, ref, rtol=2e-6, atol=2e-6)
        assert (rows[vid]["L"], rows[vid]["source_L"]) == (str(want_steps), str(LENGTHS[vid]))
    one = np.loadtxt(out / "a.csv", dtype=np.float32, delimiter=",", skiprows=1)
    assert np.array_equal(one, np.repeat(both(data, "a"), want_steps, axis=0))  # L = 1


@pytest.mark.parametrize("n", [1, 2, 7, 100, 101, 5000])
def test_pool_rows_against_the_reference_and_mmaction2s_own_arithmetic(n):
    x = (np.random.default_rng(n).standard_normal((n, 5)) * 4).astype(np.float32)
    got = pool_rows(x, 100)
    assert got.shape == (100, 5)
    np.testing.assert_allclose(got, reference_pool(x, 100), rtol=1e-6, atol=1e-6)
    interpolate = pytest.importorskip("scipy.interpolate")
    # pool_feature of tools/data/activitynet/activitynet_feature_postprocessing.py, step by
    # step: bit for bit the same
    if n == 1:
        want = np.concatenate([x] * 100)
    else:
        f = interpolate.interp1d(list(range(n)), x, axis=0)
        start, end = 1e-4, n - 1 - 1e-4
        anchor, ptr, want = (end - start) / 100, start, []
        for _ in range(100):
            want.append(np.mean(f([ptr + i / 3 * anchor for i in range(3)]), axis=0))
            ptr += anchor
    assert np.array_equal(got, np.stack(want))


# --------------------------------------------------------------------------- gtad


def test_gtad_h5_per_split_in_one_folder(store, tmp_path):
    root, data = store
    out = tmp_path / "gtad"
    for name, split in (("rgb", "rgb_val"), ("flow", "flow_val")):
        code, _, err = run(root, "--set", name, "--layout", "gtad", "--split", split,
                           "--out", out)  # fmt: skip
        assert code == 0, err
    assert {p.name for p in out.iterdir()} == {
        f"{s}_val.{e}" for s in ("rgb", "flow") for e in ("h5", "manifest.csv", "export.json")
    }
    # as gtad_lib/dataset.py reads them: h5[video_name][::skip_videoframes, ...], one file per
    # modality, concatenated along the features
    with h5py.File(out / "flow_val.h5", "r") as fl, h5py.File(out / "rgb_val.h5", "r") as rg:
        assert set(rg) == set(LENGTHS)
        for vid in LENGTHS:
            assert rg[vid].dtype == np.float32 and rg[vid].shape == (LENGTHS[vid], 6)
            assert np.array_equal(rg[vid][::1, ...], data["rgb"][vid])
            assert np.array_equal(fl[vid][::1, ...], data["flow"][vid])
    rows = manifest(out / "rgb_val.manifest.csv")
    assert (rows["c"]["file"], rows["c"]["key"], rows["c"]["L"]) == ("rgb_val.h5", "c", "5000")
    code, _, err = run(root, "--set", "rgb,flow", "--layout", "gtad", "--out", tmp_path / "g2",
                       "--prefix", "v_")  # fmt: skip
    assert code == 0, err
    with h5py.File(tmp_path / "g2" / "features.h5", "r") as f:
        assert set(f) == {f"v_{v}" for v in LENGTHS}
        assert np.array_equal(f["v_b"][()], both(data, "b"))


# --------------------------------------------------------------------------- sets together


def test_sets_on_different_grids_are_refused_by_name(store, tmp_path):
    root, _ = store
    out = tmp_path / "o"
    code, _, err = run(root, "--set", "rgb,snip", "--layout", "gtad", "--out", out)
    assert code == 2 and "set 'snip' is on another grid than set 'rgb'" in err
    assert "stride 8 vs 4" in err and "mode 'snippets' vs 'windows'" in err
    assert not out.exists()


def test_a_video_missing_from_one_set_is_reported_and_the_others_exported(store, tmp_path):
    root, data = store
    out = tmp_path / "o"
    code, stdout, err = run(root, "--set", "rgbonly,flow", "--layout", "actionformer", "--out", out)
    assert code == 1
    assert "failed: extra: not in set 'flow' (it is in 'rgbonly')" in err
    assert stdout.startswith(f"export: {len(LENGTHS)} written, 0 skipped, 0 missing, 1 failed")
    assert not (out / "extra.npy").exists() and "extra" not in manifest(out / "manifest.csv")
    assert np.load(out / "b.npy").shape == (7, 10)


def test_videos_whose_rows_differ_between_sets_are_refused_by_name(store, tmp_path):
    root, _ = store
    out = tmp_path / "o"
    code, _, err = run(root, "--set", "rgb,flowbad", "--layout", "bmn", "--out", out)
    assert code == 1
    assert "failed: b: set 'flowbad' has 6 rows, set 'rgb' 7" in err
    assert "failed: c: row centres of set 'flowbad' differ from set 'rgb' (first at row 3)" in err
    assert "failed: sp ace: not in set 'flowbad'" in err
    assert sorted(p.name for p in out.glob("*.csv")) == ["a.csv", "manifest.csv"]


@pytest.mark.parametrize(
    "name, says",
    [("trim", "no rows of an untrimmed grid"), ("fields", "not (L, D) rows")],
)
def test_sets_without_rows_are_refused(store, tmp_path, name, says):
    root, _ = store
    code, _, err = run(root, "--set", name, "--layout", "actionformer", "--out", tmp_path / "o")
    assert code == 2 and says in err and f"set '{name}'" in err
    assert not (tmp_path / "o").exists()


def test_the_per_file_formats_export_row_sets_of_any_length(store, tmp_path):
    root, data = store
    for fmt in ("npy", "csv"):
        rep = export_set(root, "rgb", tmp_path / fmt, fmt)
        assert rep.ok and len(rep.written) == len(LENGTHS)
        for vid in ("a", "c"):
            path = tmp_path / fmt / f"{vid}.{fmt}"
            if fmt == "npy":
                got = np.load(path)
            else:
                got = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
            assert np.array_equal(got, data["rgb"][vid])


def test_a_row_sets_scores_export_per_row_without_a_top1(tmp_path):
    data = add_set(FeatureStore(tmp_path / "s"), "rgb", WINDOWS, 6, {"a": 1, "b": 9}, scores=True)
    code, _, err = run(tmp_path / "s", "--set", "rgb", "--out", tmp_path / "o", "--with-scores")
    assert code == 0, err
    rows = manifest(tmp_path / "o" / "manifest.csv")
    for vid in ("a", "b"):
        assert np.array_equal(np.load(tmp_path / "o" / f"{vid}.scores.npy"), data[f"{vid}.scores"])
        assert rows[vid]["top1_index"] == rows[vid]["top1"] == rows[vid]["top1_score"] == ""


# --------------------------------------------------------------------------- resume


def test_a_rerun_skips_complete_matching_files_and_rewrites_the_others(store, tmp_path):
    root, data = store
    out = tmp_path / "o"
    argv = (root, "--set", "rgb,flow", "--layout", "actionformer", "--out", out)
    assert run(*argv)[0] == 0
    code, stdout, _ = run(*argv)
    assert code == 0 and stdout.startswith(f"export: 0 written, {len(LENGTHS)} skipped")
    np.save(out / "b.npy", np.zeros((7, 3), np.float32))  # not what this export writes
    code, stdout, _ = run(*argv)
    assert stdout.startswith(f"export: 1 written, {len(LENGTHS) - 1} skipped")
    assert np.array_equal(np.load(out / "b.npy"), both(data, "b"))
    bmn = tmp_path / "bmn"
    argv = (root, "--set", "rgb,flow", "--layout", "bmn", "--steps", "8", "--out", bmn)
    assert run(*argv)[0] == 0
    text = (bmn / "c.csv").read_text()
    (bmn / "c.csv").write_text(text[: text.rindex("\n", 0, -1)])  # a row short
    assert run(*argv)[1].startswith(f"export: 1 written, {len(LENGTHS) - 1} skipped")
    assert (bmn / "c.csv").read_text() == text
    code, _, err = run(root, "--set", "rgb,flow", "--layout", "bmn", "--out", bmn)
    assert code == 2 and "holds another export" in err and "steps=8" in err


def test_a_rerun_rewrites_videos_extracted_again(tmp_path):
    st = FeatureStore(tmp_path / "s")
    add_set(st, "rgb", WINDOWS, 6, {"a": 3, "b": 2})
    argv = (tmp_path / "s", "--set", "rgb", "--out")
    for layout in ("actionformer", "gtad"):
        assert run(*argv, tmp_path / layout, "--layout", layout)[0] == 0
    time.sleep(0.05)
    new = add_set(st, "rgb", WINDOWS, 6, {"a": 5})  # a later job wrote "a" again: 5 rows
    mtime = (tmp_path / "gtad" / "features.h5").stat().st_mtime_ns
    code, stdout, _ = run(*argv, tmp_path / "actionformer", "--layout", "actionformer")
    assert stdout.startswith("export: 1 written, 1 skipped")
    assert np.array_equal(np.load(tmp_path / "actionformer" / "a.npy"), new["a"])
    code, stdout, _ = run(*argv, tmp_path / "gtad", "--layout", "gtad")
    assert stdout.startswith("export: 2 written, 0 skipped")  # one file: written again
    with h5py.File(tmp_path / "gtad" / "features.h5", "r") as f:
        assert np.array_equal(f["a"][()], new["a"])
    assert (tmp_path / "gtad" / "features.h5").stat().st_mtime_ns > mtime
    assert run(*argv, tmp_path / "gtad", "--layout", "gtad")[1].startswith(
        "export: 0 written, 2 skipped"
    )


# --------------------------------------------------------------------------- full disk, limits


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("layout", ["actionformer", "bmn", "gtad"])
def test_a_full_disk_stops_with_one_line_and_keeps_nothing_half_written(
    store, tmp_path, monkeypatch, layout
):
    root, _ = store
    out = tmp_path / "o"
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:  # the disk fills while the second data file is written
        calls.append(fd)
        if len(calls) == 3 or (layout == "gtad" and len(calls) == 2):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    res = CliRunner().invoke(main, ["store", "export", str(root), "--set", "rgb,flow",
                                    "--layout", layout, "--out", str(out), "--quiet"])  # fmt: skip
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert "\n" not in text and "Traceback" not in text, text
    assert text.startswith("Error: cannot write ") and f"in --out {out}: the disk is full" in text
    assert leftovers(out) == [] and not (out / "manifest.csv").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, stdout, _ = run(root, "--set", "rgb,flow", "--layout", layout, "--out", out)
    done = 0 if layout == "gtad" else 1  # the first video's file is complete and kept
    assert code == 0 and stdout.startswith(f"export: {len(LENGTHS) - done} written, {done} skipped")


EFBIG_CHILD = """
import resource, signal, sys
import h5py, tqdm, yaml
import vidfeat.layouts
from vidfeat.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # the command line must ignore it itself
main(sys.argv[1:])
"""


@pytest.mark.parametrize("layout", ["actionformer", "gtad"])
def test_the_file_size_limit_stops_with_one_line_for_real(store, tmp_path, layout):
    """RLIMIT_FSIZE of 64 KiB: c's 200 kB of rows cannot be written. The write fails with
    EFBIG (SIGXFSZ would kill the process, exit -25) and the export says so in one line."""
    root, data = store
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = ["store", "export", str(root), "--set", "rgb,flow", "--layout", layout,
            "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", EFBIG_CHILD, *argv], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert f"in --out {out}: a file reached the size limit (EFBIG" in err
    assert leftovers(out) == []
    if layout == "actionformer":
        assert err.startswith("Error: cannot write c.npy")
        assert np.array_equal(np.load(out / "b.npy"), both(data, "b"))  # complete, kept
    else:
        assert (
            err.startswith("Error: cannot write features.h5") and not (out / "features.h5").exists()
        )
    assert run(*argv[2:-1])[0] == 0
    assert np.load(out / "c.npy").shape == (5000, 10) if layout == "actionformer" else True


# --------------------------------------------------------------------------- read-only stores


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file opened for writing (Python's open/os.open, h5py.File's mode), renamed or
    removed while the test runs, as ``what path``."""
    seen: list[str] = []
    _HOOK["on"] = seen

    def init(self, name, mode="r", *a, **k):  # noqa: ANN001
        if isinstance(name, str | os.PathLike) and mode != "r":
            seen.append(f"h5py {mode} {name}")
        return real(self, name, mode, *a, **k)

    real = h5py.File.__init__
    monkeypatch.setattr(h5py.File, "__init__", init)
    yield seen
    _HOOK["on"] = None


_HOOK: dict = {"on": None}


def _audit(event: str, args: tuple) -> None:
    seen = _HOOK["on"]
    if seen is None:
        return
    if event == "open":
        path, mode, flags = (list(args) + [None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        )
        if writing:
            seen.append(f"open {path}")
    elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir", "os.truncate"):
        seen.append(f"{event} {args[0]}")


sys.addaudithook(_audit)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    "args",
    [
        ("--layout", "actionformer"),
        ("--layout", "bmn"),
        ("--layout", "gtad"),
        ("--format", "npz"),
    ],  # fmt: skip
)
def test_an_export_writes_nothing_into_the_store(tmp_path, writes, args):
    root = tmp_path / "s"  # never opened before: no index cache yet
    st = FeatureStore(root)
    for name, dim in DIMS.items():
        add_set(st, name, WINDOWS, dim, {"a": 3, "b": 40})
    writes.clear()
    before = snapshot(root)
    sets = "rgb,flow" if "--layout" in args else "rgb"
    code, _, err = run(root, "--set", sets, *args, "--out", tmp_path / "o")
    assert code == 0, err
    inside = [w for w in writes if str(root) in w]
    assert inside == [] and writes, writes  # the export's own writes were seen
    assert snapshot(root) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod a-w")
def test_an_export_of_a_read_only_store(tmp_path):
    st = FeatureStore(tmp_path / "s")
    data = {n: add_set(st, n, WINDOWS, d, {"a": 3, "b": 40}) for n, d in DIMS.items()}
    subprocess.run(["chmod", "-R", "a-w", str(tmp_path / "s")], check=True)
    try:
        for layout in ("actionformer", "bmn", "gtad"):
            out = tmp_path / layout
            code, _, err = run(tmp_path / "s", "--set", "rgb,flow", "--layout", layout,
                               "--out", out)  # fmt: skip
            assert code == 0 and "warning" not in err, err
        assert np.array_equal(np.load(tmp_path / "actionformer" / "b.npy"), both(data, "b"))
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(tmp_path / "s")], check=True)
