"""Batch extraction over a video list: resume, shards for job arrays, workers, report, exit code.

Design: workers decode and compute; the parent alone writes shards. One writer per job keeps
shard files few and large, a crashing worker can never leave a half-written shard, and the
arrays cross the process boundary once (a pipe copy, small next to decoding + flow/network
compute).

Workers are plain processes, each fed one video at a time through its own pipe (not a
``ProcessPoolExecutor``, whose one shared queue hides which worker holds which video). So the
parent always knows the video each worker holds, and at most ``workers`` videos are in flight:

* a worker that dies (segfault, OOM kill) fails exactly the video it held, as ``WorkerCrashed``;
  a fresh worker takes its place and the run goes on;
* ``--timeout`` bounds each video twice: inside the worker a ``SIGALRM`` interrupts the
  extractor at the limit (the worker survives, the video fails as ``Timeout``); a call that never
  returns to Python (a hung C library call) ignores that, so the parent's watchdog kills the
  worker shortly after the limit and fails that video alone.

``--workers 1`` with a timeout runs one such worker process: only a separate process can bound
a hung C call, and it also keeps a crash from taking the run down. ``--workers 1 --timeout 0``
runs in this process (no bound, no isolation; handy under a debugger or profiler).

Class index: a set created from a labelled list records its classes (sorted labels) in
set.json, and every later list writes ``class_index`` against that stored list, so the attr
means the same within a set; a network's set uses the network's classes.

Job arrays: ``--shard i/N`` keeps the videos whose id hashes to i mod N (sha1 of the id, so the
split does not depend on the order of the list file). Every job writes shards and a failures file
named after its own unique job name, so N jobs — or a duplicate of one — can share a store
without locks; the reader deduplicates.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidfeat.errors import ConfigError, DecodeError, VidfeatError
from vidfeat.extractors import Extracted, Extractor
from vidfeat.provenance import library_versions
from vidfeat.report import Report
from vidfeat.videolist import VideoList, VideoRecord

if TYPE_CHECKING:
    from vidfeat.store import FeatureStore

DEFAULT_TIMEOUT = 600.0  # seconds per video: hours of 4K flow would need more; a hang never ends


@dataclass
class RunOptions:
    workers: int = 1
    shard: tuple[int, int] | None = None  # (i, N), 0 <= i < N
    limit: int | None = None
    dry_run: bool = False
    retry_failed: bool = False
    overwrite: bool = False
    job: str | None = None
    shard_videos: int = 64  # close + rename a shard after this many videos...
    shard_mb: float = 256.0  # ...or this many megabytes
    compression: str | None = "auto"  # gzip for integer arrays, float features as they are
    float16: bool = False
    min_free_mb: float = 64.0  # stop cleanly before the disk is full
    progress: bool = True
    timeout: float = DEFAULT_TIMEOUT  # per video, seconds; 0 = no limit
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # join this cluster; None starts a local Ray instance
    ray_local_cpus: int | None = None  # CPUs of a local Ray instance; None = the machine's
    ray_num_cpus: float = 1.0  # resources per Ray task
    ray_num_gpus: float = 0.0
    chunk_videos: int | None = None  # videos per Ray task (default: --shard-videos)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` → (i, N) with 0 <= i < N."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--shard must look like i/N, e.g. 0/8 (got {text!r})")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard i/N needs 0 <= i < N (got {i}/{n}); ids are 0-based")
    return i, n


def in_shard(video_id: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    digest = hashlib.sha1(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0]


def default_job_name(shard: tuple[int, int] | None) -> str:
    """Unique per process and sortable by start time: ``20261124T231800-host-1234[-s3of8]``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:32] or "host"
    name = f"{stamp}-{host}-{os.getpid()}"
    if shard is not None:
        name += f"-s{shard[0]}of{shard[1]}"
    return name


def writer_for(set_dir: Path, job: str, opts: RunOptions):
    """The shard writer a job uses, configured from the run options."""
    from vidfeat.store import ShardWriter

    return ShardWriter(
        set_dir,
        job,
        max_videos=opts.shard_videos,
        max_mb=opts.shard_mb,
        compression=opts.compression,
        float16=opts.float16,
        min_free_mb=opts.min_free_mb,
    )


def storage_config(opts: RunOptions) -> dict:
    """How arrays are stored: part of the set's identity (float16 and float32 runs never mix;
    compression is not: it changes no value)."""
    out: dict = {}
    if opts.float16:
        out["storage_dtype"] = "float16"
    return out


def check_options(opts: RunOptions) -> None:
    if opts.limit is not None and opts.limit < 0:
        raise ConfigError(f"--limit must be >= 0 (got {opts.limit})")
    if not opts.timeout >= 0:
        raise ConfigError(f"--timeout must be >= 0 seconds, 0 for no limit (got {opts.timeout})")
    if opts.engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray (got {opts.engine!r})")


# --------------------------------------------------------------------------- class index


def set_classes(
    store: FeatureStore, set_name: str, config: dict, videos: VideoList, stored: dict | None
) -> list[str] | None:
    """The class index ``class_index`` attrs follow: a network's classes (its scores are in
    that order), else the classes the set recorded when it was created, else (new set) this
    list's sorted labels. A label outside it is refused before any work."""
    if "classes" in config:
        classes: list[str] | None = list(config["classes"])
        whose = f"the network's {len(classes)} classes"
        fix = "extract a list labelled with the network's classes"
    elif stored is not None and "classes" in stored:
        classes = list(stored["classes"])
        whose = (
            f"the {len(classes)} classes set {set_name!r} recorded from the list that created "
            f"it ({store.set_dir(set_name) / 'set.json'})"
        )
        fix = "use --name for a new set (or another --store): a set keeps one class index"
    elif stored is not None:
        classes = list(videos.classes) or None
        if classes:
            from vidfeat.store import StoreWarning

            warnings.warn(
                f"set {set_name!r} records no class list (made from an unlabelled list or by an "
                "older vidfeat): class_index follows this list's labels and may differ from "
                "earlier runs; extract into a new --name for a consistent class index",
                StoreWarning,
                stacklevel=3,
            )
        return classes
    else:
        return list(videos.classes) or None
    unknown = sorted({r.label for r in videos.records if r.label is not None} - set(classes))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ConfigError(f"labels {shown}{more} of {videos.source} are not among {whose}; {fix}")
    return classes


def _create_set(
    store: FeatureStore, set_name: str, config: dict, classes: list[str] | None
) -> dict:
    """Create the set (or join one a concurrent job just created), recording the class list."""
    if classes is None or "classes" in config:
        return store.ensure_set(set_name, config)
    try:
        return store.ensure_set(set_name, {**config, "classes": classes})
    except ConfigError:
        # another job created it first, maybe from a list with other labels: compare the rest
        # (this raises if something else differs); the caller then checks labels against it
        return store.ensure_set(set_name, config)


# --------------------------------------------------------------------------- worker side

_EXTRACTOR: Extractor | None = None


class VideoTimeout(BaseException):
    """Raised inside a worker by SIGALRM when a video exceeds ``--timeout``. A BaseException,
    so an extractor's own ``except Exception`` cannot swallow it."""


def _init_worker(extractor: Extractor) -> None:
    global _EXTRACTOR
    _EXTRACTOR = extractor
    extractor.setup()


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`VideoTimeout` in this thread after ``seconds`` (0: never). Only the main
    thread receives signals; elsewhere this is a no-op (the parent's watchdog still applies)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise VideoTimeout

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, old)


def timeout_failure(record: VideoRecord, timeout: float, killed: bool = False) -> tuple[str, str]:
    how = (
        "did not return (stuck outside Python); its worker process was killed"
        if killed
        else "was stopped"
    )
    return (
        "Timeout",
        f"{record.path}: extraction exceeded --timeout {timeout:g} s and {how}; a longer "
        "video may need a larger --timeout (0 = no limit)",
    )


def _work(
    record: VideoRecord, class_index: int | None, timeout: float = 0.0
) -> tuple[str, Extracted | None, tuple]:
    """Runs in a worker: never raises for a bad video; returns the failure instead."""
    assert _EXTRACTOR is not None
    try:
        with _alarm(timeout):
            result = _EXTRACTOR.extract(record, class_index)
        return record.video_id, result, ()
    except VideoTimeout:
        return record.video_id, None, timeout_failure(record, timeout)
    except DecodeError as exc:
        return record.video_id, None, (type(exc).__name__, str(exc))
    except VidfeatError as exc:
        return record.video_id, None, (type(exc).__name__, str(exc))
    except MemoryError:
        return record.video_id, None, ("MemoryError", f"{record.path}: out of memory")
    except Exception as exc:  # noqa: BLE001 - one bad video must never abort the run
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" at {Path(tb.filename).name}:{tb.lineno}" if tb else ""
        return record.video_id, None, (type(exc).__name__, f"{record.path}: {exc}{where}")


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies (kill -9 of a job), so no
    orphan — possibly hung in a C call — outlives its run."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(conn: Connection, extractor: Extractor, timeout: float, parent: int) -> None:
    """A worker process: set up, say ready, then extract one video per message until told to
    stop (None) or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        return
    try:
        try:
            _init_worker(extractor)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
            conn.send(("setup-failed", type(exc).__name__, str(exc)))
            return
        conn.send(("ready",))
        while (task := conn.recv()) is not None:
            record, class_index = task
            conn.send(("result", *_work(record, class_index, timeout)))
    except (EOFError, OSError):
        return  # the parent closed the pipe or died


# --------------------------------------------------------------------------- parent side


@dataclass
class Plan:
    todo: list[VideoRecord]
    skipped_done: int
    outside_shard: int
    total: int


def plan(videos: VideoList, fs, opts: RunOptions) -> Plan:
    """Which videos this job will process (after shard, resume, retry and limit)."""
    mine = [r for r in videos.records if in_shard(r.video_id, opts.shard)]
    done = set() if fs is None or opts.overwrite else fs.completed_ids()
    if opts.retry_failed:
        failed = set() if fs is None else {f["video_id"] for f in fs.failures()}
        mine = [r for r in mine if r.video_id in failed]
    todo = [r for r in mine if r.video_id not in done]
    skipped = len(mine) - len(todo)
    if opts.limit is not None:
        todo = todo[: opts.limit]
    return Plan(todo, skipped, len(videos.records) - len(mine), len(videos.records))


def plan_report(videos: VideoList, fs, opts: RunOptions, set_dir: Path, echo=print):
    """The plan of a job and its report (skipped counted); with ``--dry-run`` also what it would
    do, printed (the caller then returns ``report.finish()``)."""
    p = plan(videos, fs, opts)
    report = Report("extract")
    report.skipped = p.skipped_done
    if opts.dry_run:
        echo(
            f"dry run: {len(p.todo)} to extract, {p.skipped_done} already done, "
            f"{p.outside_shard} in other shards, into {set_dir}"
        )
        for r in p.todo[:20]:
            echo(f"  {r.video_id}  {r.path}")
        if len(p.todo) > 20:
            echo(f"  ... and {len(p.todo) - 20} more")
    return p, report


def kept(set_dir: Path, added: list[str]) -> int:
    """How many of the videos this run added are in completed shards: after an abnormal stop
    the last shard may or may not have been completed, and the summary should say what a rerun
    will find."""
    from vidfeat.store import FeatureSet

    try:
        with FeatureSet(set_dir) as fs:
            done = fs.completed_ids()
    except (VidfeatError, OSError):
        return len(added)
    return sum(v in done for v in added)


def _stopped(report: Report, exc: BaseException, bar, echo) -> None:
    """An abnormal stop (Ctrl-C, disk full, ...) still prints the summary of what was done;
    the caller re-raises."""
    bar.close()
    report.stop("interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__)
    echo(report.finish().summary())


def run_extraction(
    videos: VideoList,
    extractor: Extractor,
    store_root: str | Path,
    set_name: str,
    opts: RunOptions,
    echo=print,
) -> Report:
    """Extract every planned video of ``videos`` into set ``set_name`` of the store.

    Returns the Report (done / skipped / failed, notes); failures are also appended to the
    set's ``failures-<job>.jsonl``. A run stopped by KeyboardInterrupt or an error (e.g. a full
    disk) completes the current shard (its videos are complete), prints the summary of what it
    did through ``echo`` and re-raises.
    """
    from vidfeat.store import FailureLog, FeatureStore, cleanup_stale_partials

    if opts.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {opts.workers})")
    check_options(opts)
    store = FeatureStore(store_root)
    config = {**extractor.config(), **library_versions(), **storage_config(opts)}
    existing = set_name in store.sets()
    fs = store.open_set(set_name) if existing else None
    # refuse to mix configurations (names the differing keys) or labels before doing any work
    stored = store.ensure_set(set_name, config) if existing else None
    classes = set_classes(store, set_name, config, videos, stored)
    p, report = plan_report(videos, fs, opts, Path(store_root) / set_name, echo)
    if opts.dry_run:
        return report.finish()
    if stored is None:
        stored = _create_set(store, set_name, config, classes)
        classes = set_classes(store, set_name, config, videos, stored)
    set_dir = store.set_dir(set_name)
    cleanup_stale_partials(set_dir)
    job = opts.job or default_job_name(opts.shard)
    class_of = {c: i for i, c in enumerate(classes or [])}
    failures = FailureLog(set_dir, job)
    from tqdm import tqdm

    bar = tqdm(
        total=len(p.todo),
        desc=f"extract {set_name}",
        unit="video",
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    if opts.engine == "ray":
        try:
            from vidfeat.engines import run_ray

            # Ray tasks write their own shards; the driver only counts and shows progress
            run_ray(p.todo, extractor, Path(store_root), set_name, job, class_of, opts, report, bar)
        except BaseException as exc:
            _stopped(report, exc, bar, echo)
            raise
        finally:
            bar.close()
        return report.finish()
    writer = writer_for(set_dir, job, opts)
    added: list[str] = []

    def handle(vid: str, result: Extracted | None, error: tuple, record: VideoRecord) -> None:
        if result is None:
            failures.add(vid, str(record.path), error[0], error[1])
            report.fail(vid, error[1])
            bar.write(f"failed {vid}: {error[1]}", file=sys.stderr)
        else:
            result.attrs["written_at"] = time.time()
            added.append(vid)  # before add: a stop inside it may still complete the shard
            writer.add(vid, result.features, result.attrs, result.extra or None)
            report.done += 1
            for note in result.notes:
                report.note(note)
        bar.update(1)

    try:
        with writer:
            if opts.workers == 1 and not opts.timeout:
                _init_worker(extractor)
                for r in p.todo:
                    handle(*_work(r, class_of.get(r.label)), r)
            elif p.todo:
                pool = WorkerPool(extractor, opts.workers, opts.timeout, class_of, handle)
                pool.run(p.todo)
    except BaseException as exc:
        report.done = kept(set_dir, added)
        _stopped(report, exc, bar, echo)
        raise
    finally:
        bar.close()
    return report.finish()


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """One worker process and the parent's end of its pipe; holds at most one video."""

    def __init__(self, ctx: SpawnContext, extractor: Extractor, timeout: float) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, extractor, timeout, os.getpid()),
            name="vidfeat-worker",
            daemon=True,  # never outlives the parent's interpreter
        )
        self.proc.start()
        child.close()
        self.ready = False
        self.record: VideoRecord | None = None
        self.deadline = math.inf

    def give(self, record: VideoRecord, class_index: int | None, limit: float) -> bool:
        """Send one video; False if the worker is already gone (nothing was assigned)."""
        try:
            self.conn.send((record, class_index))
        except OSError:
            return False
        self.record = record
        self.deadline = time.monotonic() + limit if limit > 0 else math.inf
        return True

    def receive(self) -> tuple | None:
        """The next message, or None when the worker died (with or without a message)."""
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        return None

    def stop(self, kill: bool) -> str:
        """End the process (politely unless ``kill``); returns how it ended."""
        if not kill and self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        return _exit_cause(self.proc.exitcode)


class WorkerPool:
    """``workers`` processes, one video each at a time (see the module docstring).

    ``handle(video_id, result | None, (error_class, message) | (), record)`` is called in the
    parent for every video, in completion order, exactly once — also for a video whose worker
    crashed (``WorkerCrashed``) or overran the timeout (``Timeout``).
    """

    def __init__(
        self,
        extractor: Extractor,
        workers: int,
        timeout: float,
        class_of: dict[str, int],
        handle: Callable[[str, Extracted | None, tuple, VideoRecord], None],
    ) -> None:
        self.extractor = extractor
        self.class_of = class_of
        self.handle = handle
        self.size = workers
        self.timeout = timeout
        # the worker's own alarm gets a head start: a cooperative timeout keeps the worker
        # (no respawn); only a call that never comes back to Python meets the watchdog
        self.limit = timeout + max(1.0, 0.05 * timeout) if timeout > 0 else 0.0
        # spawn: no inherited h5py/tqdm/thread state, nor the writer's lock fds
        self.ctx: SpawnContext = get_context("spawn")
        self.workers: list[_Worker] = []

    def run(self, todo: list[VideoRecord]) -> None:
        queue = deque(todo)
        try:
            self.workers = [self._spawn() for _ in range(min(self.size, len(queue)))]
            while queue or any(w.record is not None for w in self.workers):
                for w in self.workers:
                    self._feed(w, queue)
                busy = [w.deadline for w in self.workers if w.record is not None]
                left = min(busy, default=math.inf) - time.monotonic()
                ready = wait_any(
                    [w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers],
                    timeout=None if left == math.inf else max(0.0, left),
                )
                for w in [w for w in self.workers if w.conn in ready or w.proc.sentinel in ready]:
                    self._service(w, queue)
                now = time.monotonic()
                for w in [w for w in self.workers if w.record is not None and now >= w.deadline]:
                    self._overdue(w, queue)
        except BaseException:
            for w in self.workers:
                w.stop(kill=True)
            raise
        for w in self.workers:
            w.stop(kill=False)

    def _spawn(self) -> _Worker:
        return _Worker(self.ctx, self.extractor, self.timeout)

    def _feed(self, w: _Worker, queue: deque[VideoRecord]) -> None:
        if w.ready and w.record is None and queue:
            r = queue.popleft()
            if not w.give(r, self.class_of.get(r.label), self.limit):
                queue.appendleft(r)  # it died idle; its sentinel says so on the next wait

    def _replace(self, w: _Worker, queue: deque[VideoRecord]) -> str:
        """Stop ``w`` (dead or overdue) and put a fresh worker in its place if work is left."""
        cause = w.stop(kill=True)
        i = self.workers.index(w)
        if queue:
            self.workers[i] = self._spawn()
        else:
            del self.workers[i]
        return cause

    def _service(self, w: _Worker, queue: deque[VideoRecord]) -> None:
        msg = w.receive()
        if msg is None:  # the process is gone
            record, was_ready = w.record, w.ready
            cause = self._replace(w, queue)
            if record is not None:
                self.handle(
                    record.video_id,
                    None,
                    (
                        "WorkerCrashed",
                        f"{record.path}: the worker process died while extracting it "
                        f"({cause}: a crash in native code or the out-of-memory killer)",
                    ),
                    record,
                )
            elif not was_ready:
                raise VidfeatError(
                    f"a worker process died while starting ({cause}); rerun with --workers 1 "
                    "--timeout 0 to see the error in the main process"
                )
            return
        if msg[0] == "ready":
            w.ready = True
            self._feed(w, queue)
        elif msg[0] == "setup-failed":
            raise VidfeatError(
                f"a worker process could not set up the extractor: {msg[1]}: {msg[2]}"
            )
        else:
            record = w.record
            assert record is not None
            w.record, w.deadline = None, math.inf
            self._feed(w, queue)  # the worker computes the next video while the parent writes
            self.handle(msg[1], msg[2], msg[3], record)

    def _overdue(self, w: _Worker, queue: deque[VideoRecord]) -> None:
        record = w.record
        assert record is not None
        self._replace(w, queue)
        self.handle(record.video_id, None, timeout_failure(record, self.timeout, True), record)


# --------------------------------------------------------------------------- network extraction


def _batches(loader, timeout: float, batch_size: int) -> Iterator[dict]:
    """The loader's batches; a batch whose decoding overruns the timeout stops the run with a
    clear error instead of hanging it (a DataLoader cannot fail one video and go on)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise
            raise VidfeatError(
                f"a batch of {batch_size} video(s) took longer than --timeout {timeout:g} s per "
                "video to decode; completed videos are kept. Find the stuck file with `vidfeat "
                "data probe LIST`, drop it from the list (or raise --timeout) and rerun"
            ) from exc
        yield batch


def run_network_extraction(
    videos: VideoList,
    dataset_factory,
    model,
    config: dict,
    store_root: str | Path,
    set_name: str,
    opts: RunOptions,
    *,
    batch_size: int = 4,
    device=None,
    echo=print,
    postprocess=None,
) -> Report:
    """Run a trained network over a list, several videos per forward pass, decoding in
    DataLoader workers while the model computes.

    ``dataset_factory(VideoList)`` → a clips dataset (``with_meta``); the model exposes
    ``forward_features`` ([B, T, D]) and optionally ``forward_head`` (class logits, stored as
    softmax ``scores`` (K,)). ``postprocess(features [T, D] np) -> array`` may transform what is
    stored (e.g. the VGGish PCA). An audio video without a usable track (``has_audio`` false)
    stores zeros and uniform scores.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from vidfeat.clips import collate
    from vidfeat.device import amp_dtype
    from vidfeat.store import FailureLog, FeatureStore, cleanup_stale_partials

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {batch_size})")
    if opts.engine != "local":  # vidfeat.netextract sends --engine ray to the Ray driver
        raise ConfigError(
            "run_network_extraction runs one local job; for --engine ray call the "
            "vidfeat.netextract functions, which split the list into Ray tasks"
        )
    check_options(opts)
    store = FeatureStore(store_root)
    config = {**config, **library_versions(), **storage_config(opts)}
    fs = store.open_set(set_name) if set_name in store.sets() else None
    stored = store.ensure_set(set_name, config) if fs is not None else None
    classes = set_classes(store, set_name, config, videos, stored)
    p, report = plan_report(videos, fs, opts, Path(store_root) / set_name, echo)
    if opts.dry_run:
        return report.finish()
    if stored is None:
        stored = _create_set(store, set_name, config, classes)
        classes = set_classes(store, set_name, config, videos, stored)
    set_dir = store.set_dir(set_name)
    cleanup_stale_partials(set_dir)
    job = opts.job or default_job_name(opts.shard)
    failures = FailureLog(set_dir, job)
    todo = VideoList(videos.source, p.todo, classes or videos.classes, videos.format)
    class_of = {c: i for i, c in enumerate(classes or [])}
    ds = dataset_factory(todo)
    ds.with_meta = True
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=opts.workers,  # workers decode the next batches while the model computes
        collate_fn=collate,
        pin_memory=device is not None and device.type == "cuda",
        # a batch decodes in one worker: the per-video limit times the batch (0 = no limit;
        # without workers the decode runs here, where nothing can bound it)
        timeout=opts.timeout * batch_size if opts.workers > 0 else 0,
    )
    device = device or torch.device("cpu")
    dtype = amp_dtype(device)
    has_head = hasattr(model, "forward_head")
    absent_audio = config.get("modality") == "audio"
    model.eval()
    bar = tqdm(
        total=len(todo),
        desc=f"extract {set_name}",
        unit="video",
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    writer = writer_for(set_dir, job, opts)
    added: list[str] = []
    try:
        with writer:
            for batch in _batches(loader, opts.timeout, batch_size):
                for idx, (cls, msg) in batch["errors"]:
                    r = todo.records[idx]
                    failures.add(r.video_id, str(r.path), cls, msg)
                    report.fail(r.video_id, msg)
                    bar.write(f"failed {r.video_id}: {msg}", file=sys.stderr)
                    bar.update(1)
                if "x" not in batch:
                    continue
                x = batch["x"].to(device, non_blocking=True)
                with (
                    torch.no_grad(),
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
                ):
                    feats = model.forward_features(x)
                    scores = (
                        torch.softmax(model.forward_head(feats).float(), 1) if has_head else None
                    )
                feats = feats.float().cpu().numpy()
                for b, idx in enumerate(batch["index"]):
                    r = todo.records[idx]
                    attrs = dict(batch["meta"][b])
                    note = attrs.get("note")  # kept in the attrs: why a track was unusable
                    if r.label is not None:
                        attrs["label"] = r.label
                        if r.label in class_of:
                            attrs["class_index"] = class_of[r.label]
                    attrs["written_at"] = time.time()
                    f = feats[b]
                    sc = scores[b].cpu().numpy() if scores is not None else None
                    if absent_audio and attrs.get("has_audio") is False:
                        # no audio track: zeros (fusion masks them) and no opinion on the class
                        f = np.zeros_like(f)
                        sc = None if sc is None else np.full_like(sc, 1.0 / len(sc))
                    elif postprocess is not None:
                        f = postprocess(f)
                    extra = {"scores": sc} if sc is not None else None
                    added.append(r.video_id)  # before add: a stop inside it may still
                    writer.add(r.video_id, f, attrs, extra)  # complete the shard
                    report.done += 1
                    if note:
                        report.note(note.split(":")[0])
                    bar.update(1)
    except BaseException as exc:
        report.done = kept(set_dir, added)
        _stopped(report, exc, bar, echo)
        raise
    finally:
        bar.close()
    return report.finish()
