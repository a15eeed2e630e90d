"""The engine owns its resources: the engine a run names is chosen in one place
(:func:`vidfeat.extract.engine_for`), and gives each of its workers its thread budget; nothing
below the command line branches on the engine's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vidfeat.cores import available_cores
from vidfeat.errors import ConfigError
from vidfeat.extract import RunOptions, engine_for, run_extraction
from vidfeat.extract.fields import FlowFieldsExtractor, thread_budget_for
from vidfeat.extract.local import LocalEngine
from vidfeat.extract.ray import RayEngine
from vidfeat.flow import make_method
from vidfeat.videolist import VideoList

ROOT = Path(__file__).parents[1] / "vidfeat"


def test_the_engine_a_run_names_is_the_one_it_runs_on() -> None:
    assert isinstance(engine_for(RunOptions()), LocalEngine)
    assert isinstance(engine_for(RunOptions(engine="local")), LocalEngine)
    assert isinstance(engine_for(RunOptions(engine="ray")), RayEngine)
    with pytest.raises(ConfigError, match=r"--engine must be local or ray \(got 'spark'\)"):
        engine_for(RunOptions(engine="spark"))


def test_each_engine_gives_its_workers_their_threads() -> None:
    """Local: W workers share the cores (cores // W, at least 1). Ray: a task gets the CPUs it
    reserves (--ray-num-cpus, whole, at least 1), whatever --workers says."""
    cores = available_cores()
    local = LocalEngine()
    assert local.threads_per_worker(RunOptions(workers=1)) == cores
    assert local.threads_per_worker(RunOptions(workers=2)) == max(1, cores // 2)
    assert local.threads_per_worker(RunOptions(workers=10**6)) == 1
    ray = RayEngine()
    assert ray.threads_per_worker(RunOptions(engine="ray", ray_num_cpus=3.0, workers=8)) == 3
    assert ray.threads_per_worker(RunOptions(engine="ray", ray_num_cpus=0.5)) == 1
    # a flow-fields run sizes its workers by the engine of the run
    assert thread_budget_for(RunOptions(workers=2)) == max(1, cores // 2)
    assert thread_budget_for(RunOptions(engine="ray", ray_num_cpus=2.0, workers=8)) == 2


def test_an_unknown_engine_is_refused_before_the_set_is_created(tmp_path: Path) -> None:
    ex = FlowFieldsExtractor(make_method("dis"), segments=2, frames=1, short_side=32, bound=20)
    videos = VideoList(tmp_path / "l.csv", [], [], "generic")
    with pytest.raises(ConfigError, match="--engine must be local or ray"):
        run_extraction(videos, ex, tmp_path / "s", "f", RunOptions(engine="spark"), echo=print)
    assert not (tmp_path / "s" / "f").exists()


def test_only_engine_for_reads_the_engine_name() -> None:
    """``opts.engine`` is read in vidfeat.extract (engine_for) and nowhere else below the
    command line (whose option refusals name --engine ray)."""
    readers = set()
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT)
        if rel.parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "engine":
                readers.add(str(rel))
    assert readers == {"extract/__init__.py"}


def test_another_engines_options_are_refused_by_flag() -> None:
    from vidfeat.extract import refuse_foreign_options

    with pytest.raises(ConfigError, match=r"--ray-address, --chunk-videos apply to --engine ray"):
        refuse_foreign_options(RunOptions(), {"ray_address", "chunk_videos", "workers"})
    refuse_foreign_options(RunOptions(engine="ray"), {"ray_address", "chunk_videos", "workers"})
    refuse_foreign_options(RunOptions(), {"workers", "timeout"})


def test_token_authentication_is_read_as_ray_reads_it(tmp_path: Path) -> None:
    from vidfeat.extract.ray import token_auth_enabled

    home = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    assert not token_auth_enabled(home)
    assert token_auth_enabled({"RAY_AUTH_MODE": "token"})
    assert not token_auth_enabled({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"})
    assert token_auth_enabled({**home, "RAY_AUTH_TOKEN": "x"})
    (tmp_path / "tok").write_text("x")
    assert token_auth_enabled({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")})


def test_joining_a_cluster_without_a_token_warns_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--ray-address without token authentication: one line on stderr says who can run code."""
    import vidfeat.extract.ray as ray_engine

    joined = []

    class FakeRay:
        def is_initialized(self) -> bool:
            return False

        def init(self, **kw: object) -> None:
            joined.append(kw)

    monkeypatch.setattr(ray_engine, "_import_ray", FakeRay)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-token"))
    ray_engine._ray_init(RunOptions(engine="ray", ray_address="10.1.2.3:6379"))
    err = capsys.readouterr().err
    assert joined == [
        {"include_dashboard": False, "log_to_driver": False, "address": "10.1.2.3:6379"}
    ]
    assert err.count("\n") == 1 and "10.1.2.3:6379" in err
    assert "anyone who reaches it can run code as this user" in err
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ray_engine._ray_init(RunOptions(engine="ray", ray_address="10.1.2.3:6379"))
    assert capsys.readouterr().err == ""
