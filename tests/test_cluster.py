"""Beyond one machine, for real: a two-node Ray cluster on this machine (a node killed mid-run
loses and doubles nothing), and many jobs on one store while a fusion head trains on it.

The cluster's nodes are two `ray start` daemons, each with its own loopback address (127.0.0.2
head, 127.0.0.3 worker: Ray turns 127.0.0.1 into the machine's outward address, other 127.x
addresses stay as given), its own temp dir and its own process group, so the test kills exactly
what it started. Figures are printed (pytest -s)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import psutil
import pytest

from vidfeat.store import FeatureStore, verify_store
from vidfeat.synth import SynthConfig, generate

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

REPO = Path(__file__).parents[1]
VIDFEAT = [sys.executable, "-c", "from cli import main; main()"]
RAY_CLI = Path(sys.executable).with_name("ray")
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
FLOW = ["--method", "farneback", "-T", "2", "-N", "1", "--short-side", "32", "--quiet"]
SET = "farneback-fields"
# a slowed-down extractor (~45 ms a video instead of ~12 on this machine): a chunk outlasts the
# start of the worker node's first Ray worker, and a kill lands mid-chunk
SLOW = ["--iterations", "300"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, str]]:
    """20 tiny synthetic videos: (absolute path, label, video id)."""
    root = tmp_path_factory.mktemp("clips")
    generate(
        root,
        SynthConfig(classes=4, per_class=5, seconds=1.0, fps=10, size=32, seed=7),
        progress=False,
    )
    rows = []
    for name in ("train.csv", "val.csv"):
        for line in (root / name).read_text().splitlines()[1:]:
            path, label, vid, _ = line.split(",")
            rows.append((str(root / path), label, vid))
    return rows


def video_list(path: Path, clips: list[tuple[str, str, str]], n: int) -> list[str]:
    """A list of ``n`` ids over the clips (each clip under several ids); returns the ids."""
    rows = [(p, lab, f"{vid}-r{i // len(clips)}") for i, (p, lab, vid) in enumerate(clips * n)]
    rows = rows[:n]
    path.write_text("path,label,video_id\n" + "".join(f"{p},{lab},{v}\n" for p, lab, v in rows))
    return [v for _, _, v in rows]


def summary(stdout: str) -> tuple[int, int, int]:
    m = re.search(r"\b(\d+) done, (\d+) skipped, (\d+) failed\b", stdout)
    assert m, stdout
    done, skipped, failed = (int(x) for x in m.groups())
    return done, skipped, failed


def stored_copies(set_dir: Path) -> list[str]:
    """Every id in every completed shard, duplicates included (what the reader would dedupe)."""
    ids: list[str] = []
    for shard in sorted(set_dir.glob("part-*.h5")):
        with h5py.File(shard, "r", locking=False) as f:
            ids += list(f.keys())
    return ids


# --------------------------------------------------------------------------- the Ray cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    def __init__(self, ip: str, temp_dir: Path, pgid: int) -> None:
        self.ip, self.temp_dir, self.pgid = ip, temp_dir, pgid

    def processes(self) -> list[psutil.Process]:
        """The node's daemons (its `ray start` process group) and their children (workers)."""
        out: dict[int, psutil.Process] = {}
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.pgid:
                    out[p.pid] = p
                    out.update({c.pid: c for c in p.children(recursive=True)})
            except (ProcessLookupError, psutil.Error):
                pass
        return list(out.values())

    def raylet(self) -> psutil.Process:
        (raylet,) = [p for p in self.processes() if p.name() == "raylet"]
        return raylet

    def node_id(self) -> str:
        m = re.search(r"--node_id=([0-9a-f]+)", " ".join(self.raylet().cmdline()))
        assert m, self.raylet().cmdline()
        return m.group(1)


class RayCluster:
    """`ray start` daemons started by this test and only those: shut down by process group
    (and, for strays, by their temp dir on the command line), never with `ray stop`, which
    would stop every Ray instance of the user."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        # token authentication as a real cluster should have it: one secret on every node
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        self.nodes: list[RayNode] = []
        self.seen: dict[int, psutil.Process] = {}

    def start(self, ip: str, *args: str, env: dict | None = None) -> RayNode:
        # short paths: Ray's unix sockets live under the temp dir (108-byte limit)
        temp_dir = Path(tempfile.mkdtemp(prefix="vfray-", dir="/tmp"))
        proc = subprocess.Popen(
            [str(RAY_CLI), "start", "--node-ip-address", ip, "--temp-dir", str(temp_dir)]
            + ["--num-cpus", "1", "--disable-usage-stats", *args],
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its daemons inherit this process group
        )
        node = RayNode(ip, temp_dir, proc.pid)
        self.nodes.append(node)  # shut down even if the start fails half-way
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        self.remember()
        return node

    def remember(self) -> None:
        for node in self.nodes:
            self.seen.update({p.pid: p for p in node.processes()})

    def shutdown(self) -> list[int]:
        """SIGTERM, then SIGKILL, every process of the cluster; returns the pids still alive."""
        self.remember()
        dirs = [str(n.temp_dir) for n in self.nodes]
        for p in psutil.process_iter():
            try:
                if any(d in " ".join(p.cmdline()) for d in dirs):
                    self.seen[p.pid] = p
            except psutil.Error:
                pass
        procs = [p for p in self.seen.values() if p.pid != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for node in self.nodes:
                try:
                    os.killpg(node.pgid, sig)
                except ProcessLookupError:
                    pass
            for p in procs:  # psutil checks the process is still the one seen (no pid reuse)
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            _, procs = psutil.wait_procs(procs, timeout=5)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def cluster():
    if not RAY_CLI.exists():
        pytest.skip(f"no ray command next to {sys.executable} (pip install 'vidfeat[ray]')")
    c = RayCluster()
    t0 = time.perf_counter()
    try:
        head = c.start(
            HEAD_IP,
            *("--head", "--port", str(c.port), "--include-dashboard", "false"),
            env=FAST_HEALTH_CHECK,
        )
        worker = c.start(WORKER_IP, "--address", c.address, "--resources", '{"node2": 1}')
        c.started_in = time.perf_counter() - t0
        c.head, c.worker = head, worker
        yield c
    finally:
        left = c.shutdown()
        assert not left, f"Ray processes left running: {left}"


# the head's GCS declares a silent node dead after 3 missed 0.5 s health checks (Ray's default:
# 5 missed 3 s ones) so that the killed node's chunks are retried within seconds
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


def extract_on(cluster: RayCluster, lst: Path, store: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*VIDFEAT, "extract", "flow", "--videos", str(lst), "--store", str(store), *FLOW]
        + [*SLOW, "--engine", "ray", "--ray-address", cluster.address, *extra],
        cwd=REPO,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ray_log(set_dir: Path) -> list[dict]:
    (path,) = set_dir.glob("ray-*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def verify_cli(store: Path, lst: Path) -> None:
    res = subprocess.run(
        [*VIDFEAT, "store", "verify", str(store), "--videos", str(lst)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_two_node_cluster_runs_chunks_on_both_nodes(
    cluster: RayCluster, clips: list, tmp_path: Path
) -> None:
    lst = tmp_path / "list.csv"
    ids = video_list(lst, clips, 48)
    store = tmp_path / "store"
    t0 = time.perf_counter()
    proc = extract_on(cluster, lst, store, "--chunk-videos", "3", "--shard-videos", "3")
    out, err = proc.communicate(timeout=300)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, out + err
    assert summary(out) == (48, 0, 0), out
    assert "on 2 Ray nodes" in out, out
    log = ray_log(store / SET)
    assert sorted(r["chunk"] for r in log) == list(range(16))
    head_id, worker_id = cluster.head.node_id(), cluster.worker.node_id()
    assert {r["node"] for r in log} == {head_id, worker_id}, log
    assert {r["node"]: r["ip"] for r in log} == {head_id: HEAD_IP, worker_id: WORKER_IP}
    fs = FeatureStore(store).open_set(SET)
    assert sorted(fs.ids()) == sorted(ids)
    assert sorted(stored_copies(store / SET)) == sorted(ids)  # every id exactly once
    rep = verify_store(store, expect_ids=set(ids))
    assert rep.ok and not rep.warnings, (rep.problems, rep.warnings)
    verify_cli(store, lst)
    on_worker = sum(r["videos"] for r in log if r["node"] == worker_id)
    print(
        f"\nray cluster: 2 nodes started in {cluster.started_in:.1f}s; 48 videos in 16 chunks "
        f"in {took:.1f}s, {on_worker} on the worker node"
    )


def test_worker_node_killed_mid_run_loses_and_doubles_nothing(
    cluster: RayCluster, clips: list, tmp_path: Path
) -> None:
    lst = tmp_path / "list.csv"
    ids = video_list(lst, clips, 60)
    store = tmp_path / "store"
    set_dir = store / SET
    worker_id = cluster.worker.node_id()
    raylet = cluster.worker.raylet()
    t0 = time.perf_counter()
    proc = extract_on(cluster, lst, store, "--chunk-videos", "10", "--shard-videos", "2")
    killed = None
    try:
        # wait until a task on the worker node has completed a shard of its chunk, then the
        # node is lost as a machine would be: its raylet and its workers SIGKILLed at once (a
        # worker outliving its raylet would finish its chunk before noticing, within a second)
        deadline = time.monotonic() + 120
        while killed is None:
            assert proc.poll() is None, "the run ended before the worker node ran a chunk"
            assert time.monotonic() < deadline, "no chunk started on the worker node"
            workers = raylet.children(recursive=True)
            for attempt in running_attempts(workers, set_dir):
                if list(set_dir.glob(f"part-{attempt}-*.h5")):
                    cluster.remember()
                    doomed = [raylet, *workers]
                    for p in doomed:
                        p.kill()
                    psutil.wait_procs(doomed, timeout=10)
                    killed = attempt
                    break
            else:
                time.sleep(0.005)
        killed_at = time.perf_counter() - t0
        at_kill = {v for sh in set_dir.glob(f"part-{killed}-*.h5") for v in stored_copies_of(sh)}
        left_partial = bool(list(set_dir.glob(f"part-{killed}-*.h5.partial")))
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.perf_counter() - t0
    assert proc.returncode == 0, out + err
    done, skipped, failed = summary(out)
    assert failed == 0 and done + skipped == 60, out
    # the dead attempt's completed shards stay, and are all it wrote; the retry skipped them
    dead = {v for sh in set_dir.glob(f"part-{killed}-*.h5") for v in stored_copies_of(sh)}
    assert dead == at_kill and 0 < len(dead) < 10, (dead, at_kill)  # killed mid-chunk
    assert skipped >= len(dead), (dead, out)
    chunk = int(re.search(r"-c(\d+)-[0-9a-f]+$", killed).group(1))
    (row,) = [r for r in ray_log(set_dir) if r["chunk"] == chunk]
    assert row["node"] != worker_id and row["attempt"] != killed and row["skipped"] >= len(dead)
    # no id lost, none doubled, the store verifies clean
    fs = FeatureStore(store).open_set(SET)
    assert sorted(fs.ids()) == sorted(ids)
    copies = stored_copies(set_dir)
    assert len(copies) == len(set(copies)) == 60, len(copies)
    # the driver removed the dead attempt's partial: nothing for verify to warn about
    assert not list(set_dir.glob("*.partial*"))
    rep = verify_store(store, expect_ids=set(ids))
    assert rep.ok and not rep.warnings, (rep.problems, rep.warnings)
    verify_cli(store, lst)
    print(
        f"\nray node lost: the worker node's raylet and workers SIGKILLed {killed_at:.1f}s into a "
        f"60-video run, mid-chunk {chunk} ({len(dead)} of its videos already stored); the run "
        f"completed in {took:.1f}s: {done} done, {skipped} skipped by the retry, 0 lost, 0 "
        f"doubled; {'a' if left_partial else 'no'} partial shard left by the dead attempt"
    )


def test_driver_removes_only_its_dead_attempts_partials(tmp_path: Path) -> None:
    """After the tasks: this job's partials whose lock is free go; a held lock or another
    job's partial stays."""
    import fcntl

    from vidfeat.extract.job import Job, RunOptions
    from vidfeat.extract.ray import _remove_dead_partials
    from vidfeat.videolist import VideoList

    names = ["part-J-c00000-aa-0", "part-J-c00001-bb-2", "part-J-c00002-cc-0", "part-K-c00000-dd-0"]
    for n in names:
        (tmp_path / f"{n}.h5.partial").write_bytes(b"")
        (tmp_path / f"{n}.h5.partial.lock").write_bytes(b"")
    (tmp_path / "part-J-c00000-aa-1.h5.partial").write_bytes(b"")  # no lock: writer gone
    held = os.open(tmp_path / "part-J-c00002-cc-0.h5.partial.lock", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # a writer on a cut-off node still at work
    try:
        job = Job(
            tmp_path.parent,
            tmp_path.name,
            {},
            VideoList(Path("x"), [], [], "csv"),
            None,
            RunOptions(),
            "J",
        )
        removed = {p.name for p in _remove_dead_partials(job)}
    finally:
        os.close(held)
    assert removed == {
        "part-J-c00000-aa-0.h5.partial",
        "part-J-c00000-aa-1.h5.partial",
        "part-J-c00001-bb-2.h5.partial",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "part-J-c00002-cc-0.h5.partial",
        "part-J-c00002-cc-0.h5.partial.lock",
        "part-K-c00000-dd-0.h5.partial",
        "part-K-c00000-dd-0.h5.partial.lock",
    ]


def stored_copies_of(shard: Path) -> list[str]:
    with h5py.File(shard, "r", locking=False) as f:
        return list(f.keys())


def running_attempts(workers: list[psutil.Process], set_dir: Path) -> list[str]:
    """Attempt names of the chunks these workers are writing now (their open partials)."""
    out = []
    for p in workers:
        try:
            files = p.open_files()
        except psutil.Error:
            continue
        for f in files:
            name = Path(f.path).name
            if Path(f.path).parent == set_dir and name.endswith(".h5.partial"):
                out.append(name[len("part-") : -len(".h5.partial")].rsplit("-", 1)[0])
    return out
