"""`vidfeat store export`: files read back exactly, manifest, --videos, resume, refusals."""

from __future__ import annotations

import csv
import json
import os
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vidfeat.export as export_mod
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.export import FORMATS, export_set, export_stem
from vidfeat.store import FeatureStore, ShardWriter

CLASSES = ["jump", "run", "swim"]
RGB = {"modality": "rgb", "T": 4, "dtype": "float32", "feature_shape": [4, 6]}
FIELDS = {"modality": "flow", "dtype": "uint8", "feature_shape": [4, 2, 2, -1, -1]}
# ids a file name cannot hold as they are: '%', a leading '.', spaces, non-ASCII, reserved stems
IDS = ["v_-abc1", "日本 id", "100%", ".hidden", "a.scores", "a", "manifest", "x" * 230]


def _attrs(i: int, vid: str) -> dict:
    return {
        "video_id": vid,
        "label": CLASSES[i % 3],
        "fps": 25.0,
        "duration": 2.0 + i,
        "segment_start": np.arange(4) * 0.5,
        "segment_end": np.arange(1, 5) * 0.5,
    }


def make_store(root: Path) -> dict:
    """Sets rgb (float32 + scores + classes), rgb16 (float16), audio (no scores), fields."""
    rng = np.random.default_rng(0)
    st = FeatureStore(root)
    data: dict = {"rgb": {}, "scores": {}, "rgb16": {}}
    for name, cfg, f16 in [
        ("rgb", {**RGB, "classes": CLASSES}, False),
        ("rgb16", {**RGB, "storage_dtype": "float16"}, True),
        ("audio", {**RGB, "modality": "audio"}, False),
    ]:
        st.ensure_set(name, cfg)
        with ShardWriter(st.set_dir(name), "j", compression=None, float16=f16) as w:
            for i, vid in enumerate(IDS):
                x = rng.standard_normal((4, 6)).astype(np.float32) * 10.0 ** (i - 4)
                sc = rng.dirichlet(np.ones(3)).astype(np.float32)
                w.add(vid, x, _attrs(i, vid), extra={"scores": sc} if name == "rgb" else None)
                if name == "rgb":
                    data["rgb"][vid], data["scores"][vid] = x, sc
    with st.open_set("rgb16") as fs:
        data["rgb16"] = {v: fs.features(v) for v in IDS}
    st.ensure_set("fields", FIELDS)
    with ShardWriter(st.set_dir("fields"), "j") as w:
        for i, vid in enumerate(IDS[:2]):
            w.add(vid, rng.integers(0, 256, (4, 2, 2, 3, 5), dtype=np.uint8), _attrs(i, vid))
    return data


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("store")
    return root, make_store(root)


def run(*args: str | Path) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["store", "export", *map(str, args), "--quiet"])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_back(path: Path, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return np.load(path)
    if fmt == "npz":
        with np.load(path) as z:
            return z["features"]
    with open(path) as fh:
        assert fh.readline().strip() == ",".join(f"f{j}" for j in range(6))
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)


# --------------------------------------------------------------------------- names


def test_stems_are_safe_unique_and_give_the_id_back() -> None:
    stems = [export_stem(v) for v in IDS]
    assert len(set(stems)) == len(IDS)
    assert stems[:3] == ["v_-abc1", "%E6%97%A5%E6%9C%AC%20id", "100%25"]
    assert stems[3] == "%2Ehidden"  # no hidden files
    assert stems[4] == "a%2Escores"  # never clashes with a.scores.npy, the scores of "a"
    assert stems[6] == "%6Danifest"  # never manifest.csv
    for vid, stem in zip(IDS, stems, strict=True):
        assert set(stem) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+=@%~"
        )
        assert len(stem.encode()) <= 200
        if "~" not in stem:
            assert urllib.parse.unquote(stem) == vid
    long = stems[-1]
    assert "~" in long and long.startswith("x" * 100)
    assert export_stem("x" * 231) != long  # the hash tells long ids apart
    # a cut never splits a %XX escape
    assert all(export_stem("é" * n).split("~")[0].count("%") * 3 <= 200 for n in (60, 61, 62))
    with pytest.raises(Exception, match="invalid video id"):
        export_stem("a/b")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_hold_exactly_the_stored_arrays_and_the_manifest_rows(store, tmp_path, fmt) -> None:
    root, data = store
    out = tmp_path / "out"
    code, stdout, _ = run(root, "--set", "rgb", "--format", fmt, "--out", out)
    assert code == 0, stdout
    assert stdout.startswith(f"export: {len(IDS)} written, 0 skipped, 0 missing in ")
    assert stdout.rstrip().endswith(f"-> {out}")
    rows = manifest(out)
    assert [r["id"] for r in rows] == sorted(IDS)
    for i, vid in enumerate(IDS):
        row = next(r for r in rows if r["id"] == vid)
        assert row["file"] == f"{export_stem(vid)}.{fmt}"
        got = read_back(out / row["file"], fmt)
        assert got.dtype == np.float32 and np.array_equal(got, data["rgb"][vid])
        assert (row["label"], row["T"], row["D"]) == (CLASSES[i % 3], "4", "6")
        assert float(row["fps"]) == 25.0 and float(row["duration"]) == 2.0 + i
        assert row["segment_start"] == "0;0.5;1;1.5" and row["segment_end"] == "0.5;1;1.5;2"
        assert "top1" not in row
    names = {p.name for p in out.iterdir()}
    assert names == {r["file"] for r in rows} | {"manifest.csv", "export.json"}
    meta = json.loads((out / "export.json").read_text())
    assert (meta["set"], meta["format"], meta["with_scores"]) == ("rgb", fmt, False)


def test_float16_sets_export_as_float32(store, tmp_path) -> None:
    root, data = store
    rep = export_set(root, "rgb16", tmp_path / "o", "npy")
    assert rep.ok and len(rep.written) == len(IDS)
    for vid in IDS:
        got = np.load(tmp_path / "o" / f"{export_stem(vid)}.npy")
        assert data["rgb16"][vid].dtype == np.float16
        assert got.dtype == np.float32 and np.array_equal(got, data["rgb16"][vid])


@pytest.mark.parametrize("fmt", FORMATS)
def test_with_scores(store, tmp_path, fmt) -> None:
    root, data = store
    out = tmp_path / "out"
    code, stdout, _ = run(root, "--set", "rgb", "--format", fmt, "--out", out, "--with-scores")
    assert code == 0, stdout
    for row in manifest(out):
        vid, sc = row["id"], data["scores"][row["id"]]
        if fmt == "npz":
            assert "scores_file" not in row
            with np.load(out / row["file"]) as z:
                assert np.array_equal(z["features"], data["rgb"][vid])
                assert z["scores"].dtype == np.float32 and np.array_equal(z["scores"], sc)
        else:
            assert row["scores_file"] == f"{export_stem(vid)}.scores.npy"
            assert np.array_equal(np.load(out / row["scores_file"]), sc)
        k = int(np.argmax(sc))
        assert int(row["top1_index"]) == k and row["top1"] == CLASSES[k]
        assert np.float32(row["top1_score"]) == sc[k]


def test_with_scores_refused_for_a_set_without_scores(store, tmp_path) -> None:
    root, _ = store
    code, _, err = run(root, "--set", "audio", "--out", tmp_path / "o", "--with-scores")
    assert code == 2 and "stores no clip scores" in err and "without --with-scores" in err
    assert not (tmp_path / "o").exists()


def test_fields_set_refused_naming_exportable_sets_or_flattened(store, tmp_path) -> None:
    root, _ = store
    code, _, err = run(root, "--set", "fields", "--out", tmp_path / "o")
    assert code == 2 and "not (T, D) features" in err
    assert "audio, rgb, rgb16" in err and "--flatten" in err
    code, stdout, _ = run(root, "--set", "fields", "--out", tmp_path / "o", "--flatten")
    assert code == 0, stdout
    got = np.load(tmp_path / "o" / f"{export_stem(IDS[0])}.npy")
    stored = FeatureStore(root).open_set("fields").features(IDS[0])
    assert got.shape == (4, 2 * 2 * 3 * 5) and got.dtype == np.float32
    assert np.array_equal(got, stored.reshape(4, -1).astype(np.float32))
    assert manifest(tmp_path / "o")[0]["D"] == "60"


# --------------------------------------------------------------------------- --videos


def test_videos_limit_and_missing_ids_exit_1_listed(store, tmp_path) -> None:
    root, data = store
    lst = tmp_path / "list.csv"
    lst.write_text("path,video_id\nx.mp4,a\ny.mp4,nope-1\nz.mp4,v_-abc1\nw.mp4,nope-2\n")
    out = tmp_path / "out"
    code, stdout, err = run(root, "--set", "rgb", "--out", out, "--videos", lst)
    assert code == 1
    assert "export: 2 written, 0 skipped, 2 missing in" in stdout
    assert "nope-1, nope-2" in err and "not in set 'rgb'" in err
    assert (out / "missing.txt").read_text() == "nope-1\nnope-2\n"
    assert [r["id"] for r in manifest(out)] == ["a", "v_-abc1"]  # the list's order
    assert sorted(p.name for p in out.glob("*.npy")) == ["a.npy", "v_-abc1.npy"]
    # the same list without the missing ids: exit 0, missing.txt gone
    lst.write_text("path,video_id\nx.mp4,a\n")
    code, stdout, _ = run(root, "--set", "rgb", "--out", out, "--videos", lst)
    assert code == 0 and "0 written, 1 skipped, 0 missing" in stdout
    assert not (out / "missing.txt").exists()


# --------------------------------------------------------------------------- resume


def test_rerun_skips_written_files_and_redoes_half_written_ones(store, tmp_path) -> None:
    root, data = store
    out = tmp_path / "out"
    assert run(root, "--set", "rgb", "--out", out)[0] == 0
    files = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    # a crash mid-file: the final file is absent, a half temp file of a dead process remains
    victim = out / "a.npy"
    half = victim.read_bytes()[:70]
    victim.unlink()
    tmp = out / ".a.npy.tmp-99999999-0123abcd"
    tmp.write_bytes(half)
    (out / "manifest.csv").unlink()
    time.sleep(0.01)
    code, stdout, _ = run(root, "--set", "rgb", "--out", out)
    assert code == 0 and f"1 written, {len(IDS) - 1} skipped, 0 missing" in stdout
    assert not tmp.exists()
    assert np.array_equal(np.load(victim), data["rgb"]["a"])
    for name, mtime in files.items():
        if name != "a.npy":
            assert (out / name).stat().st_mtime_ns == mtime, name  # skipped, untouched
    assert len(manifest(out)) == len(IDS)  # rewritten complete


def test_interrupted_write_leaves_no_final_file(store, tmp_path, monkeypatch) -> None:
    root, data = store
    out = tmp_path / "out"
    real_save = np.save

    def crash(fh, arr, **kw) -> None:
        fh.write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod.np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        export_set(root, "rgb", out, "npy")
    assert sorted(p.name for p in out.iterdir()) == ["export.json"]  # no file, no temp file
    monkeypatch.setattr(export_mod.np, "save", real_save)
    rep = export_set(root, "rgb", out, "npy")
    assert rep.ok and len(rep.written) == len(IDS) and rep.skipped == []


def test_a_video_extracted_again_is_exported_again(tmp_path) -> None:
    st = FeatureStore(tmp_path / "s")
    st.ensure_set("rgb", RGB)
    x = np.ones((4, 6), np.float32)
    with ShardWriter(st.set_dir("rgb"), "j1") as w:
        w.add("a", x, {"written_at": time.time() - 60})
        w.add("b", x, {"written_at": time.time() - 60})
    out = tmp_path / "out"
    assert len(export_set(tmp_path / "s", "rgb", out).written) == 2
    past = time.time() - 30  # the export ran after the first extraction, before the second
    os.utime(out / "a.npy", (past, past))
    os.utime(out / "b.npy", (past, past))
    with ShardWriter(st.set_dir("rgb"), "j2") as w:  # --overwrite extraction of "a"
        w.add("a", 2 * x, {})
    rep = export_set(tmp_path / "s", "rgb", out)
    assert (rep.written, rep.skipped) == (["a"], ["b"])
    assert np.array_equal(np.load(out / "a.npy"), 2 * x)


# --------------------------------------------------------------------------- --out


def test_foreign_out_refused_without_overwrite(store, tmp_path) -> None:
    root, data = store
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(root, "--set", "rgb", "--out", out)
    assert code == 2 and "--overwrite" in err and "not empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, stdout, _ = run(root, "--set", "rgb", "--out", out, "--overwrite")
    assert code == 0, stdout
    assert (out / "notes.txt").read_text() == "mine"  # other files are left alone
    # an export of another format or set is another export: refused too
    for other in (["--format", "npz"], ["--set", "rgb16"], ["--with-scores"]):
        args = ["--set", "rgb", "--out", out, *other]
        code, _, err = run(root, *args)
        assert code == 2 and "holds another export" in err and "--overwrite" in err
    # the same export again resumes; --overwrite rewrites instead of skipping
    code, stdout, _ = run(root, "--set", "rgb", "--out", out)
    assert code == 0 and f"0 written, {len(IDS)} skipped" in stdout
    code, stdout, _ = run(root, "--set", "rgb", "--out", out, "--overwrite")
    assert code == 0 and f"{len(IDS)} written, 0 skipped" in stdout


def test_library_refusals(store, tmp_path) -> None:
    root, _ = store
    with pytest.raises(ConfigError, match="--format"):
        export_set(root, "rgb", tmp_path / "o", "parquet")
    with pytest.raises(Exception, match="no feature set 'nope'.*sets present: audio"):
        export_set(root, "nope", tmp_path / "o")
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        export_set(root, "rgb", tmp_path / "f")
