"""Beyond one machine, for real: a two-node Ray cluster on this machine (a node killed mid-run
loses and doubles nothing), and many jobs on one store while a fusion head trains on it.

The cluster's nodes are two `ray start` daemons, each with its own loopback address (127.0.0.2
head, 127.0.0.3 worker: Ray turns 127.0.0.1 into the machine's outward address, other 127.x
addresses stay as given), its own temp dir and its own process group, so the test kills exactly
what it started. Figures are printed (pytest -s)."""

from __future__ import annotations

import contextlib
import hashlib
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
import numpy as np
import psutil
import pytest

from vidfeat.store import FeatureStore, verify_store
from vidfeat.synth import SynthConfig, generate

# one xdist group: the Ray clusters of this module and test_engines never run at once
pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.xdist_group("ray")]

REPO = Path(__file__).parents[1]
VIDFEAT = [sys.executable, "-c", "from vidfeat.cli import main; main()"]
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


def video_list(
    path: Path, clips: list[tuple[str, str, str]], n: int, relative: bool = False
) -> list[str]:
    """A list of ``n`` ids over the clips (each clip under several ids), with absolute paths or
    paths relative to the list's folder; returns the ids."""
    rows = [(p, lab, f"{vid}-r{i // len(clips)}") for i, (p, lab, vid) in enumerate(clips * n)]
    rows = [(os.path.relpath(p, path.parent) if relative else p, lab, v) for p, lab, v in rows[:n]]
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
        for sig, grace in ((signal.SIGTERM, 0.5), (signal.SIGKILL, 5.0)):
            procs = alive(procs)
            groups = {pgid_of(p) for p in procs}
            for node in self.nodes:
                if node.pgid in groups:  # still ours: a live process of ours is in it
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(node.pgid, sig)
            for p in procs:  # psutil checks the process is still the one seen (no pid reuse)
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            deadline = time.monotonic() + grace
            while (procs := alive(procs)) and time.monotonic() < deadline:
                time.sleep(0.05)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        return [p.pid for p in alive(procs)]


def pgid_of(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except ProcessLookupError:
        return None


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a zombie has ended: only its parent's wait is missing)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.fixture(scope="class")
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


def extract_on(
    cluster: RayCluster, lst: Path, store: Path, *extra: str, cwd: Path = REPO
) -> subprocess.Popen:
    return subprocess.Popen(
        [*VIDFEAT, "extract", "flow", "--videos", str(lst), "--store", str(store), *FLOW]
        + [*SLOW, "--engine", "ray", "--ray-address", cluster.address, *extra],
        cwd=cwd,
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


class TestTwoNodeRayCluster:
    """Both tests share one cluster (its start is most of their time); the second loses the
    worker node. The cluster is shut down before the rest of the module runs."""

    def test_chunks_run_on_both_nodes(
        self, cluster: RayCluster, clips: list, tmp_path: Path
    ) -> None:
        # the driver in another folder than the tasks: `--store store` and the list's relative
        # paths are the driver's, wherever a task runs
        lst = tmp_path / "list.csv"
        ids = video_list(lst, clips, 48, relative=True)
        store = tmp_path / "store"
        t0 = time.perf_counter()
        proc = extract_on(
            cluster, Path("list.csv"), Path("store"), "--chunk-videos", "3", "--shard-videos", "3",
            cwd=tmp_path,
        )  # fmt: skip
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

    def test_worker_node_lost_mid_run_loses_and_doubles_nothing(
        self, cluster: RayCluster, clips: list, tmp_path: Path
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
            at_kill = {
                v for sh in set_dir.glob(f"part-{killed}-*.h5") for v in stored_copies_of(sh)
            }
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
            f"\nray node lost: the worker node's raylet and workers SIGKILLed {killed_at:.1f}s "
            f"into a 60-video run, mid-chunk {chunk} ({len(dead)} of its videos already "
            f"stored); the run completed in {took:.1f}s: {done} done, {skipped} skipped by the "
            f"retry, 0 lost, 0 doubled; {'a' if left_partial else 'no'} partial shard left by "
            "the dead attempt"
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


# --------------------------------------------------------------------------- many jobs, one store

JOBS, MANY = 16, 2000
CHEAP = ["--method", "farneback", "-T", "1", "-N", "1", "--short-side", "16", "--quiet"]
CHEAP += ["--workers", "1", "--timeout", "0"]  # in-process: no worker pool to start
T_EMB, D_EMB = 4, 8


class Reader:
    """A reader beside the writers: opens the set afresh again and again (its index rebuilt from
    the shards then on disk) and reads every id it lists that it has not read yet in full,
    features and attrs, or with ``full`` every listed id's features. A completed shard never
    changes, so a torn or partial shard would show as a new id that does not read."""

    def __init__(self, set_dir: Path, check=None) -> None:
        self.set_dir, self.check = set_dir, check
        self.seen: set[str] = set()
        self.counts: list[int] = []

    def once(self, full: bool = False) -> None:
        from vidfeat.store import FeatureSet

        with FeatureSet(self.set_dir) as fs:
            ids = fs.ids()
            assert self.seen <= set(ids), "an id vanished from the set"
            for vid in ids:
                if vid not in self.seen:
                    arr, attrs = fs.get(vid)
                    assert arr.size and "written_at" in attrs, vid
                    self.seen.add(vid)
                elif full:
                    arr = fs.features(vid)
                else:
                    continue
                if self.check is not None:
                    self.check(vid, arr)
        self.counts.append(len(ids))


def children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@pytest.fixture(scope="module")
def sixteen(clips: list, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """16 concurrent `vidfeat extract flow --shard i/16` jobs over 2,000 ids on one store,
    while this process opens the set again and again, reading every id it lists."""
    root = tmp_path_factory.mktemp("sixteen")
    lst, store = root / "list.csv", root / "store"
    ids = video_list(lst, clips, MANY)
    args = ["extract", "flow", "--videos", str(lst), "--store", str(store), *CHEAP]
    # one process's fixed cost: the same command with nothing to do
    cpu0 = children_cpu()
    idle = subprocess.run([*VIDFEAT, *args, "--limit", "0"], cwd=REPO, capture_output=True)
    assert idle.returncode == 0, idle.stderr
    cpu1 = children_cpu()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*VIDFEAT, *args, "--shard", f"{i}/{JOBS}", "--shard-videos", "25"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(JOBS)
    ]
    reader = Reader(store / SET)
    try:
        while any(p.poll() is None for p in procs):
            if (store / SET / "set.json").exists():
                reader.once()
            time.sleep(0.1)
        outs = [p.communicate() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    took = time.perf_counter() - t0
    cpu2 = children_cpu()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err
    return {
        "store": store, "list": lst, "ids": ids, "seconds": took, "reads": reader.counts,
        "summaries": [summary(out) for out, _ in outs], "cpu": cpu2 - cpu1,
        "start_cpu": cpu1 - cpu0,
    }  # fmt: skip


def test_sixteen_jobs_on_one_store_lose_and_double_nothing(sixteen: dict) -> None:
    store, ids = sixteen["store"], sixteen["ids"]
    done = sum(d for d, _, _ in sixteen["summaries"])
    assert done == MANY and all(f == 0 for _, _, f in sixteen["summaries"])
    copies = stored_copies(store / SET)
    lost, doubled = set(ids) - set(copies), len(copies) - len(set(copies))
    assert not lost and not doubled and sorted(copies) == sorted(ids)
    assert not list((store / SET).glob("*.partial*"))
    reads = sixteen["reads"]
    assert len(reads) >= 3 and reads == sorted(reads), reads  # the set only grew
    rep = verify_store(store, expect_ids=set(ids))
    assert rep.ok and not rep.warnings, (rep.problems, rep.warnings)
    verify_cli(store, sixteen["list"])
    print(
        f"\nmany jobs: {JOBS} concurrent `extract flow --shard i/{JOBS}` processes, {MANY} "
        f"videos, one store: {sixteen['seconds']:.1f}s wall ({MANY / sixteen['seconds']:.0f} "
        f"videos/s), {sixteen['cpu']:.1f} CPU-s in all ({sixteen['start_cpu']:.2f} CPU-s is one "
        f"process's fixed cost: start-up, list, set; {os.getloadavg()[0]:.1f} load average), "
        f"{len(list((store / SET).glob('part-*.h5')))} shards; lost {len(lost)}, "
        f"doubled {doubled}; a reader opened the set {len(reads)} times during the run and read "
        f"every id it listed in full ({reads[0]} -> {reads[-1]} ids)"
    )


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def emb_of(vid: str, label: str) -> np.ndarray:
    """The (T, D) features of a video: its class's prototype plus noise seeded by the id."""
    proto = np.random.default_rng(_seed(label)).normal(0, 1, D_EMB)
    seed = _seed(vid)
    return (proto * 1.5 + np.random.default_rng(seed).normal(0, 0.6, (T_EMB, D_EMB))).astype(
        np.float32
    )


def write_emb(set_dir: str, job: str, rows: list[tuple[str, str]], per_shard: int, pause: float):
    """Write ``(video id, label)`` rows into the set as job ``job`` (one ShardWriter)."""
    from vidfeat.store import ShardWriter

    with ShardWriter(set_dir, job, max_videos=per_shard) as w:
        for vid, label in rows:
            w.add(vid, emb_of(vid, label), {"label": label})
            time.sleep(pause)


# the appending job: another process with its own ShardWriter, paced to outlast the training
APPENDER = (
    "import json, sys; sys.path.insert(0, 'tests'); from test_cluster import write_emb; "
    "a = json.loads(sys.argv[1]); write_emb(a['dir'], 'appender', a['rows'], 10, a['pause'])"
)


def test_fuse_train_reads_the_store_while_a_job_appends(sixteen: dict, tmp_path: Path) -> None:
    from vidfeat.store import FeatureSet

    store, lst = sixteen["store"], sixteen["list"]
    rows = [line.split(",") for line in lst.read_text().splitlines()[1:]]
    labelled = [(vid, label) for _, label, vid in rows]
    base, more = labelled[:1500], labelled[1500:]
    FeatureStore(store).ensure_set(
        "emb", {"modality": "rgb", "T": T_EMB, "feature_shape": [T_EMB, D_EMB], "dtype": "float32"}
    )
    set_dir = store / "emb"
    write_emb(str(set_dir), "base", base, 100, 0.0)
    head = "path,label,video_id\n"
    (tmp_path / "train.csv").write_text(
        head + "".join(f"{p},{lab},{v}\n" for p, lab, v in rows[:1400])
    )
    (tmp_path / "val.csv").write_text(
        head + "".join(f"{p},{lab},{v}\n" for p, lab, v in rows[1400:1500])
    )
    before = FeatureSet(set_dir)
    assert len(before) == 1500
    labels = dict(labelled)

    expected: dict[str, np.ndarray] = {}

    def check(vid: str, arr: np.ndarray) -> None:
        if vid not in expected:
            expected[vid] = emb_of(vid, labels[vid])
        assert arr.shape == (T_EMB, D_EMB) and np.array_equal(arr, expected[vid]), vid

    reader = Reader(set_dir, check)
    reader.once()  # the 1,500 videos there before: read in full once, checked
    run = tmp_path / "run"
    t0 = time.perf_counter()
    train = subprocess.Popen(
        [*VIDFEAT, "fuse", "train", "--store", str(store), "--features", "emb", "--head", "single"]
        + ["--train", str(tmp_path / "train.csv"), "--val", str(tmp_path / "val.csv")]
        + ["--out", str(run), "--epochs", "3", "--batch-size", "64", "--no-cache", "--quiet"]
        + ["--head-opt", "hidden=16", "--device", "cpu"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    appender = None
    verified, verified_mid_append = False, False
    try:
        while train.poll() is None or (appender is not None and appender.poll() is None):
            if appender is None and (run / "config.yaml").exists():
                # the training has started (it is about to open the set): append meanwhile
                appender = subprocess.Popen(
                    [sys.executable, "-c", APPENDER]
                    + [json.dumps({"dir": str(set_dir), "rows": more, "pause": 0.015})],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            reader.once(full=True)
            if not verified and 1500 < reader.counts[-1] < 2000:
                verified_mid_append = appender is not None and appender.poll() is None
                rep = verify_store(store)  # mid-append: a live partial is a note, not a problem
                assert rep.ok and not rep.warnings, (rep.problems, rep.warnings)
                verified = True
            time.sleep(0.1)
        t_out, t_err = train.communicate()
        assert appender is not None, t_out + t_err
        a_out, a_err = appender.communicate()
        reader.once(full=True)  # after the last shard: the loop's last read may precede it
    finally:
        for p in (appender, train):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    took = time.perf_counter() - t0
    assert appender.returncode == 0, a_out + a_err
    assert train.returncode == 0, t_out + t_err
    assert (run / "best.pt").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 3
    # the training ran while the appender completed shards
    t_start, t_end = (run / "config.yaml").stat().st_mtime, (run / "last.pt").stat().st_mtime
    appended = sorted(p.stat().st_mtime for p in set_dir.glob("part-appender-*.h5"))
    during = sum(t_start <= m <= t_end for m in appended)
    assert during >= 1, (t_start, t_end, appended)
    reads = reader.counts
    assert reads == sorted(reads) and reads[0] == 1500 and reads[-1] == 2000, reads
    assert verified_mid_append, reads  # it read and verified while the set grew
    # a reader opened before the appends sees them after refresh()
    assert len(before) == 1500
    before.refresh()
    assert before.ids() == sorted(labels) and len(before) == 2000
    for vid in (more[0][0], more[-1][0]):
        check(vid, before.features(vid))
    rep = verify_store(store)
    assert rep.ok and not rep.warnings, (rep.problems, rep.warnings)
    print(
        f"\ntraining while appending: `fuse train` (3 epochs over 1,400 videos, --no-cache) ran "
        f"while another process appended 500 videos in {len(appended)} shards ({during} "
        f"completed during training), {took:.1f}s; a reader opened the set {len(reads)} times "
        f"and read every listed id in full ({reads[0]} -> {reads[-1]} ids), never a partial or "
        "torn video; "
        "a reader opened before the appends sees them after refresh()"
    )
