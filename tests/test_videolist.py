from __future__ import annotations

from pathlib import Path

import pytest

from vidfeat.errors import ListError
from vidfeat.videolist import load_list, read_classes, write_classes


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_generic_csv_relative_and_absolute_paths(tmp_path: Path) -> None:
    abs_video = tmp_path / "elsewhere" / "b.mp4"
    f = write(
        _mkdir(tmp_path / "lists") / "train.csv",
        f"path,label\nvideos/a.mp4,jump\n{abs_video},run\nc.mp4,jump\n",
    )
    vl = load_list(f)
    assert [r.video_id for r in vl] == ["a", "b", "c"]
    assert vl.records[0].path == tmp_path / "lists" / "videos" / "a.mp4"
    assert vl.records[1].path == abs_video
    assert vl.classes == ["jump", "run"]
    assert vl.label_indices() == [0, 1, 0]
    assert vl.records[2].line == 4


def test_optional_columns_and_split_filter(tmp_path: Path) -> None:
    f = write(
        tmp_path / "all.csv",
        "video_id,path,label,split\nx1,a.mp4,b,train\nx2,a2.mp4,a,val\nx3,a3.mp4,a,train\n",
    )
    vl = load_list(f, split="train")
    assert vl.ids() == ["x1", "x3"]
    assert vl.classes == ["a", "b"]


def test_unlabelled_csv_and_plain_text_list(tmp_path: Path) -> None:
    assert not load_list(write(tmp_path / "u.csv", "path\na.mp4\nb.mp4\n")).labelled
    vl = load_list(write(tmp_path / "l.txt", "# my videos\nvids/one.mp4\n\n/data/two.webm\n"))
    assert vl.format == "text" and vl.ids() == ["one", "two"]
    assert vl.records[1].path == Path("/data/two.webm") and vl.records[1].line == 4


def test_kinetics_csv_with_video_root(tmp_path: Path) -> None:
    root = tmp_path / "k600"
    (root / "abseiling").mkdir(parents=True)
    (root / "abc_000010_000020.mp4").write_bytes(b"x")
    (root / "abseiling" / "def_000001_000011.mp4").write_bytes(b"x")
    f = write(
        tmp_path / "kinetics_train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "yoga,abc,10,20,train,0\n"
        "abseiling,def,1,11,train,0\n"
        "yoga,gone,5,15,train,0\n",
    )
    vl = load_list(f, video_root=root)
    assert vl.format == "kinetics"
    assert vl.ids() == ["abc_000010_000020", "def_000001_000011"]
    assert vl.records[1].path == root / "abseiling" / "def_000001_000011.mp4"
    assert vl.missing == [(4, root / "gone_000005_000015.mp4")]
    with pytest.raises(ListError, match="--video-root"):
        load_list(f)


@pytest.mark.parametrize(
    "text,match",
    [
        ("label,youtube_id,time_start,time_end,split,views\nx,a,1,2,train,3\n", r":1: unknown "),
        ("label,youtube_id,time_start,split\nx,a,1,train\n", r":1: .*'time_end' column"),
        ("label,youtube_id,time_start,time_end,split\nx,a,one,2,train\n", r":2: time_start"),
    ],
)
def test_kinetics_errors_name_the_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    f = write(tmp_path / "k.csv", text)
    with pytest.raises(ListError, match=match) as info:
        load_list(f, video_root=tmp_path)
    assert "k.csv" in str(info.value)


def test_validation_labels_must_be_known_to_training(tmp_path: Path) -> None:
    train = load_list(write(tmp_path / "t.csv", "path,label\na.mp4,x\nb.mp4,y\n"))
    val = load_list(write(tmp_path / "v.csv", "path,label\nc.mp4,y\n"), classes=train.classes)
    assert val.classes == ["x", "y"] and val.label_indices() == [1]
    with pytest.raises(ListError, match=r"v2\.csv:3: label 'z' never appears"):
        load_list(write(tmp_path / "v2.csv", "path,label\nc.mp4,y\nd.mp4,z\n"), classes=["x", "y"])


@pytest.mark.parametrize(
    "text,match",
    [
        ("path,label\na/x.mp4,1\nb/x.mp4,2\n", r":3: duplicate video id 'x' \(first on line 2\)"),
        ("", "empty"),
        ("\n\n", "empty"),
        ("path,label\n", "no videos"),
        ("path,label,colour\na.mp4,1,red\n", r":1: unknown columns \['colour'\]"),
        ("file,class\na.mp4,1\n", r":1: unknown columns"),
        ("path,label\na.mp4,1,extra\n", ":2: expected 2 fields"),
        ("path,label\na.mp4,x\nb.mp4,\n", ":3: row without a label"),
        ("video_id,path\n..,a.mp4\n", ":2: invalid video id '..'"),
        ("video_id,path\na/b,a.mp4\n", "invalid video id"),
        ("path,label\n,x\n", ":2: empty path"),
    ],
)
def test_list_errors_name_the_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    f = write(tmp_path / "bad.csv", text)
    with pytest.raises(ListError, match=match) as info:
        load_list(f)
    assert "bad.csv" in str(info.value)


def test_missing_list_and_labels_required(tmp_path: Path) -> None:
    with pytest.raises(ListError, match="not found"):
        load_list(tmp_path / "nope.csv")
    with pytest.raises(ListError, match="needs labels"):
        load_list(write(tmp_path / "u.csv", "path\na.mp4\n"), require_labels=True)


def test_class_index_round_trip(tmp_path: Path) -> None:
    write_classes(tmp_path / "classes.txt", ["a", "b c", "d"])
    assert read_classes(tmp_path / "classes.txt") == ["a", "b c", "d"]
