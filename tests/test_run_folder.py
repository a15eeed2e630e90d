"""One owner of the run folder (vidfeat.models): a folder that is no valid run is refused by
every command that takes one, naming config.yaml and the key, without a traceback (a fusion
run's config goes through the same reader); checkpoints are written atomically, so a trainer
killed mid-save leaves the previous best.pt whole; one atomic-write helper serves every writer;
the run's format does not import the training loop."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_runs_guard import tiny_feature_store

from vidfeat.cli import main
from vidfeat.errors import ConfigError, RunError
from vidfeat.fusion.config import read_fuse_config
from vidfeat.fusion.evaluate import load_run
from vidfeat.models import init_options, load_trained, resolve_run
from vidfeat.outdir import atomic_write, remove_stale_temps, write_atomic

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--segments", "2", "--frames", "2", "--size", "32", "--short-side", "40",
        "--batch-size", "4", "--workers", "0", "--optimizer", "adamw", "--quiet",
        "--backbone", "resnet10t", "--net-opt", "txb_width=16"]  # fmt: skip
GOOD = "modality: rgb\ntrain: train.csv\nval: null\narch: stnet\nbackbone: resnet10t\nframes: 2\n"

# what a folder's config.yaml holds -> what the message must name besides config.yaml
BAD_CONFIGS = {
    "not-a-mapping": ("- modality\n- rgb\n", "not a mapping"),
    "empty": ("", "not a mapping"),
    "missing-keys": ("modality: rgb\nbackbone: resnet10t\n", "'train'"),
    "unknown-key": (GOOD + "temporal_shift: 8\n", "'temporal_shift'"),
    "yaml-syntax": ("modality: rgb\ntrain: [train.csv\nval: null\n", "line 3"),
    "deeply-nested": ("net_options: " + "[" * 30000 + "]" * 30000 + "\n", "nested too deeply"),
    "wrong-type": (GOOD.replace("frames: 2", "frames: five"), "frames must be an integer"),
}


def cli(*args: str | Path) -> tuple[int, str, BaseException | None]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output, res.exception


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def bad_run(root: Path, case: str) -> Path:
    run = root / case
    run.mkdir()
    (run / "config.yaml").write_text(BAD_CONFIGS[case][0])
    (run / "classes.txt").write_text("a\nb\n")
    (run / "best.pt").write_bytes(b"never read")
    return run


def assert_refused(code: int, text: str, exc: BaseException | None, run: Path, case: str) -> None:
    # a ClickException ends in SystemExit; anything else escaping is what prints a traceback
    assert code != 0 and isinstance(exc, SystemExit), (code, text, exc)
    assert "Traceback" not in text, text
    assert str(run / "config.yaml") in text and BAD_CONFIGS[case][1] in text, text


# --------------------------------------------------------------------------- bad runs


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_library_refuses_a_folder_that_is_no_valid_run(case: str, tmp_path: Path) -> None:
    run = bad_run(tmp_path, case)
    for path in (run, run / "best.pt"):
        with pytest.raises(RunError, match=BAD_CONFIGS[case][1]) as err:
            resolve_run(path)
        assert err.value.path == str(run / "config.yaml")
    with pytest.raises(RunError, match="config.yaml"):
        load_trained(run)


def test_refusals_name_the_key(tmp_path: Path) -> None:
    keys = {}
    for case in ("missing-keys", "unknown-key", "wrong-type"):
        with pytest.raises(RunError) as err:
            resolve_run(bad_run(tmp_path, case))
        keys[case] = err.value.key
    assert keys == {
        "missing-keys": "train",
        "unknown-key": "temporal_shift",
        "wrong-type": "frames",
    }


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_extract_and_models_info_refuse_a_bad_run_without_traceback(
    case: str, tiny_synth: Path, tmp_path: Path
) -> None:
    run = bad_run(tmp_path, case)
    videos = tiny_synth / "train.csv"
    for engine in ("local", "ray"):
        out = cli("extract", "rgb", "--videos", videos, "--store", tmp_path / "store",
                  "--checkpoint", run, "--engine", engine)  # fmt: skip
        assert_refused(*out, run, case)
    assert_refused(*cli("models", "info", run), run, case)
    assert not (tmp_path / "store" / "rgb").exists()  # refused before any work


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_train_init_refuses_a_bad_run_without_traceback(
    case: str, tiny_synth: Path, tmp_path: Path
) -> None:
    run = bad_run(tmp_path, case)
    out = cli("train", "rgb", "--videos", tiny_synth / "train.csv", "--out", tmp_path / "ft",
              "--init", run, "--epochs", "1", *TINY[:-4])  # fmt: skip
    assert_refused(*out, run, case)


def test_init_options_take_the_run_and_refuse_contradictions(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(GOOD + "frames: 3\nnet_options: {txb_width: 16}\n")
    asked = {"arch": "stnet", "backbone": "resnet50", "frames": 5, "pretrained": False,
             "backbone_weights": None, "net_options": {}}  # fmt: skip
    got = init_options(run / "best.pt", asked, given=set())
    assert (got["arch"], got["backbone"], got["frames"]) == ("stnet", "resnet10t", 3)
    assert got["init"] == str(run / "best.pt") and got["net_options"]["txb_width"] == 16
    assert got["net_options"]["tmb"] == "paper"  # a run that records no tmb: the old default
    with pytest.raises(ConfigError, match="--backbone resnet50 contradicts .* 'resnet10t'"):
        init_options(run, asked, given={"backbone"})
    with pytest.raises(ConfigError, match="--net-opt txb_width=8 contradicts"):
        init_options(run, {**asked, "net_options": {"txb_width": 8}}, given=set())
    with pytest.raises(ConfigError, match="--pretrained and --init exclude each other"):
        init_options(run, {**asked, "pretrained": True}, given=set())
    with pytest.raises(RunError, match="^--init .*: not a vidfeat training run"):
        init_options(tmp_path, asked, given=set())


# --------------------------------------------------------------------------- bad fusion runs

# what a fusion run's config.yaml holds (from the good one a 1-epoch run wrote) -> what the
# message must name besides config.yaml, and the key it names
BAD_FUSION: dict[str, tuple[Callable[[str], str], str, str | None]] = {
    "not-a-mapping": (lambda good: "- store\n- features\n", "not a mapping", None),
    "empty": (lambda good: "", "not a mapping", None),
    "missing-keys": (
        lambda good: "store: s\nhead: single\ntrain: t.csv\n",
        "missing key 'features'",
        "features",
    ),
    "unknown-key": (
        lambda good: good + "temporal_shift: 8\n",
        "'temporal_shift'",
        "temporal_shift",
    ),
    "yaml-syntax": (lambda good: "store: s\nfeatures: [f\nhead: single\n", "line 3", None),
    "deeply-nested": (
        lambda good: "head_options: " + "[" * 30000 + "]" * 30000 + "\n",
        "nested too deeply",
        None,
    ),
    "wrong-type": (
        lambda good: good.replace("features:\n- f\n", "features: f\n"),
        "features must be a list of strings",
        "features",
    ),
    "wrong-type-in-list": (
        lambda good: good.replace("features:\n- f\n", "features:\n- 3\n"),
        "features must be a list of strings",
        "features",
    ),
    "segment-run": (lambda good: GOOD, "missing keys 'store', 'features', 'head'", "store"),
}


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """A 1-epoch fusion run on a tiny store: (run, store, train list, val list)."""
    root = tmp_path_factory.mktemp("fusion")
    store, train_csv, val_csv = tiny_feature_store(root)
    run = root / "run"
    code, text, _ = cli("fuse", "train", "--store", store, "--features", "f", "--head", "single",
                        "--train", train_csv, "--val", val_csv, "--epochs", "1", "--quiet",
                        "--out", run)  # fmt: skip
    assert code == 0, text
    return run, store, train_csv, val_csv


def bad_fusion_run(fusion_run: tuple[Path, ...], root: Path, case: str) -> Path:
    run = root / case
    shutil.copytree(fusion_run[0], run)
    good = (run / "config.yaml").read_text()
    assert "features:\n- f\n" in good  # what the wrong-type cases replace
    (run / "config.yaml").write_text(BAD_FUSION[case][0](good))
    return run


@pytest.mark.parametrize("case", BAD_FUSION)
def test_fuse_eval_predict_resume_and_ensemble_refuse_a_bad_fusion_run(
    case: str, fusion_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    _, store, train_csv, val_csv = fusion_run
    run = bad_fusion_run(fusion_run, tmp_path, case)
    before = {p.name: sha(p) for p in run.iterdir()}
    commands = {
        "eval": ["fuse", "eval", "--run", run, "--store", store, "--videos", val_csv],
        "predict": ["fuse", "predict", "--run", run, "--store", store, "--videos", val_csv,
                    "--out", tmp_path / "pred.csv"],
        "resume": ["fuse", "train", "--store", store, "--features", "f", "--head", "single",
                   "--train", train_csv, "--val", val_csv, "--epochs", "2", "--quiet",
                   "--out", run, "--resume"],
        "ensemble": ["ensemble", "--members", run, "--store", store, "--videos", val_csv,
                     "--folds", "2", "--out", tmp_path / "ens"],
    }  # fmt: skip
    for name, args in commands.items():
        code, text, exc = cli(*args)
        assert code != 0 and isinstance(exc, SystemExit), (name, code, text, exc)
        assert "Traceback" not in text, (name, text)
        assert str(run / "config.yaml") in text and BAD_FUSION[case][1] in text, (name, text)
    assert {p.name: sha(p) for p in run.iterdir()} == before  # nothing in the run changed
    assert not (tmp_path / "pred.csv").exists() and not list(run.glob("eval-*"))
    with pytest.raises(RunError) as err:
        load_run(run)
    assert err.value.path == str(run / "config.yaml") and err.value.key == BAD_FUSION[case][2]


def test_a_fusion_run_of_an_older_vidfeat_reads_with_defaults(
    fusion_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "old"
    shutil.copytree(fusion_run[0], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    keep = ("store", "features", "head", "train", "val", "head_options")
    (run / "config.yaml").write_text(
        yaml.safe_dump({**{k: cfg[k] for k in keep}, "head_options": None})
    )
    lr = load_run(run)
    assert lr.config.head_options == {} and lr.config.epochs == 30  # null and absent: defaults
    assert read_fuse_config(fusion_run[0] / "config.yaml").features == ["f"]


def test_fuse_resume_rewrites_metrics_whole_and_drops_a_torn_line(
    fusion_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    _, store, train_csv, val_csv = fusion_run
    run = tmp_path / "run"
    shutil.copytree(fusion_run[0], run)
    metrics = run / "metrics.jsonl"
    first = metrics.read_text().splitlines()
    assert len(first) == 1
    # killed mid-append of epoch 2's line, before its last.pt: the line is cut short
    metrics.write_text(first[0] + '\n{"epoch": 2, "train_lo')
    inode = metrics.stat().st_ino
    code, text, _ = cli("fuse", "train", "--store", store, "--features", "f", "--head", "single",
                        "--train", train_csv, "--val", val_csv, "--epochs", "2", "--quiet",
                        "--out", run, "--resume")  # fmt: skip
    assert code == 0, text
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == json.loads(first[0])
    assert metrics.stat().st_ino != inode  # replaced whole (a temporary renamed over it)


def test_one_reader_reads_every_run_config() -> None:
    """The fusion side reads its config through vidfeat.models.config, never yaml itself."""
    for name in ("trainer.py", "evaluate.py", "ensemble.py"):
        src = (ROOT / "vidfeat" / "fusion" / name).read_text()
        assert "safe_load" not in src and "FuseConfig(**" not in src, name


# --------------------------------------------------------------------------- atomic checkpoints

# Runs the command line with torch.save replaced: a save of best.pt writes half of the real
# bytes to whatever it was given (the file itself, or a temporary) and the process dies.
KILL_IN_SAVE = """
import io, os, sys
sys.path.insert(0, sys.argv[1])
import torch
real = torch.save
def save(obj, f, *a, **kw):
    if "best.pt" not in os.path.basename(str(getattr(f, "name", f))):
        return real(obj, f, *a, **kw)
    buf = io.BytesIO()
    real(obj, buf, *a, **kw)
    data = buf.getvalue()
    fh = f if hasattr(f, "write") else open(f, "wb")
    fh.write(data[: len(data) // 2])
    fh.flush()
    os._exit(17)
torch.save = save
from vidfeat.cli import main
main(args=sys.argv[2:], prog_name="vidfeat")
"""


@pytest.mark.parametrize("trainer", ["train", "fuse"])
def test_a_kill_mid_save_leaves_the_previous_best_intact(
    trainer: str, tiny_synth: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    if trainer == "train":
        args = ["train", "rgb", "--videos", tiny_synth / "train.csv", "--out", run, *TINY]
        key, check = "key", lambda: load_trained(run).checkpoint
    else:
        store, train_csv, val_csv = tiny_feature_store(tmp_path)
        args = ["fuse", "train", "--store", store, "--features", "f", "--head", "single",
                "--train", train_csv, "--val", val_csv, "--quiet", "--out", run]  # fmt: skip
        key, check = "_key", lambda: load_run(run)
    code, text, _ = cli(*args, "--epochs", "1")
    assert code == 0, text
    # make epoch 2 the best so far whatever its accuracy: it saves best.pt
    last = torch.load(run / "last.pt", weights_only=True)
    last["best"][key] = -1.0
    torch.save(last, run / "last.pt")
    before = sha(run / "best.pt")
    again = [*map(str, args), "--epochs", "2", "--resume"]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_SAVE, str(ROOT), *again],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 17, proc.stdout + proc.stderr  # died inside the save of best.pt
    assert sha(run / "best.pt") == before
    assert torch.load(run / "best.pt", weights_only=True) and check()  # whole, and it loads
    left = [p.name for p in run.iterdir() if p.name.startswith(".best.pt.tmp-")]
    assert len(left) == 1  # the half-written temporary of the dead process ...
    code, text, _ = cli(*again)
    assert code == 0, text
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # ... cleared on resume
    assert sha(run / "best.pt") != before and check()


def test_an_import_writes_every_file_whole_and_config_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models import` writes best.pt, classes.txt, model.json and config.yaml through
    atomic_write, config.yaml (what makes the folder a run) last."""
    import timm

    import vidfeat.outdir

    weights = tmp_path / "r10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    written = []
    real = vidfeat.outdir.open_temp_beside

    def recording(path: str | Path, mode: int = 0o666) -> tuple[int, Path]:
        written.append(Path(path).name)
        return real(path, mode)

    monkeypatch.setattr(vidfeat.outdir, "open_temp_beside", recording)
    code, text, _ = cli("models", "import", "timm", "resnet10t", "--weights", weights,
                        "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, text
    assert sorted(written) == ["best.pt", "classes.txt", "config.yaml", "model.json"]
    assert written[-1] == "config.yaml"
    assert resolve_run(tmp_path / "run").config.backbone == "resnet10t"


# --------------------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_atomic(target, b"old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as fh:
        fh.write(b"half of the new")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    write_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as a file made by open()


def test_atomic_write_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    write_atomic(link, "{}")
    assert victim.read_text() == "mine" and not link.is_symlink()


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".best.pt.tmp-99999999-0123abcd0123abcd"
    mine = tmp_path / f".last.pt.tmp-{os.getpid()}-0123abcd"
    other = tmp_path / ".notes.tmp"
    for p in (dead, mine, other):
        p.write_bytes(b"x")
    remove_stale_temps(tmp_path)
    assert not dead.exists() and mine.exists() and other.exists()


# --------------------------------------------------------------------------- layout


def test_the_run_format_does_not_import_the_training_loop() -> None:
    users = [*sorted((ROOT / "vidfeat" / "models").glob("*.py")),
             ROOT / "vidfeat" / "extract" / "network.py",
             ROOT / "vidfeat" / "fusion" / "trainer.py"]  # fmt: skip
    for f in users:
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n == "vidfeat.train"], f


def test_the_run_config_imports_no_torch() -> None:
    """The command line builds its train options from TrainConfig; --help must stay light."""
    code = "import sys, vidfeat.models.config, vidfeat.models; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"
