"""The local engine: a crash-isolating worker pool on this machine.

Workers decode and compute; the parent alone writes shards. One writer per job keeps shard
files few and large, a crashing worker can never leave a half-written shard, and the arrays
cross the process boundary once (a pipe copy; integer arrays the store gzips, i.e. flow
fields, already deflated by the worker, so 5-8x fewer bytes and the parent only writes).

Workers are plain processes, each fed one video at a time through its own pipe (not a
``ProcessPoolExecutor``, whose one shared queue hides which worker holds which video). So the
parent always knows the video each worker holds, and at most ``workers`` videos are in flight:

* a worker that dies (segfault, OOM kill) fails exactly the video it held, as ``WorkerCrashed``;
  a fresh worker takes its place and the run goes on;
* ``--timeout`` bounds each video twice: inside the worker a ``SIGALRM`` interrupts the
  extractor at the limit (the worker survives, the video fails as ``Timeout``); a call that never
  returns to Python (a hung C library call) ignores that, so the parent's watchdog kills the
  worker shortly after the limit and fails that video alone;
* Ctrl-C / SIGTERM reach the parent only (workers ignore them): the parent stops handing out
  videos, ends the workers and closes the open shard, so every completed video is kept.

``--workers 1`` with a timeout runs one such worker process: only a separate process can bound
a hung C call, and it also keeps a crash from taking the run down. ``--workers 1 --timeout 0``
runs in this process (no bound, no isolation; handy under a debugger or profiler).

A network job (batched forward passes, ``run_local(job)``) runs its own loop: see
:mod:`vidfeat.extract.network`.

:class:`LocalEngine` is this engine as :func:`~vidfeat.extract.run_extraction` runs it, and
owns its resources: each of the W workers gets ``cores // W`` threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import sys
import time
from collections import deque
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from multiprocessing.context import SpawnContext
from typing import Any

from vidfeat.children import safe_path_children
from vidfeat.cores import cores_per_worker
from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.extract.job import Job, RunOptions
from vidfeat.extract.worker import Extractor, record_outcome, timeout_failure, work
from vidfeat.stop import ignore_stop_signals
from vidfeat.store.deflate import deflate_for_store
from vidfeat.videolist import VideoRecord

POLL = 0.2  # seconds: how soon the parent notices a stop request while every worker is busy


class LocalEngine:
    """``--engine local``: the job's videos on this machine, in ``--workers`` W processes."""

    name = "local"
    options: tuple[str, ...] = ()  # RunOptions fields that only this engine reads

    def run(self, job: Job, task: Any) -> None:
        run_local(job, task)

    def threads_per_worker(self, opts: RunOptions) -> int:
        """``cores // W`` (at least 1): the W workers share the machine's cores instead of
        oversubscribing them."""
        return cores_per_worker(opts.workers)


def run_local(job: Job, task: Any, *, in_process: bool = False) -> None:
    """Run ``task`` over the job's videos on this machine, writing into the job's set. A task
    with its own ``run_local(job)`` (batched networks) runs that; a per-video extractor runs in
    the worker pool, or in this process when ``in_process`` (a Ray task) or with
    ``--workers 1 --timeout 0``."""
    own = getattr(task, "run_local", None)
    if own is not None:
        own(job)
        return
    opts = job.opts
    if opts.workers < 1 and not in_process:
        raise ConfigError(f"--workers must be >= 1 (got {opts.workers})")
    with job.writing():
        if in_process or (opts.workers == 1 and not opts.timeout):
            task.setup()
            for r in job.todo:
                if job.stop_requested:
                    break
                record_outcome(job, r, *work(task, r, job.class_index(r), opts.timeout))
        elif job.todo:
            WorkerPool(task, opts.workers, opts.timeout, job).run(job.todo)


# --------------------------------------------------------------------------- worker process


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies (kill -9 of a job), so no
    orphan — possibly hung in a C call — outlives its run."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(
    conn: Connection,
    extractor: Extractor,
    timeout: float,
    parent: int,
    compression: str | None = None,
) -> None:
    """A worker process: set up, say ready, then extract one video per message until told to
    stop (None) or the parent is gone. Integer features the store gzips (flow fields) are
    deflated here, on the worker's threads, under the job's ``compression``: 5-8x fewer bytes
    cross the pipe, and the parent only writes them."""
    ignore_stop_signals()  # Ctrl-C and SIGTERM are the parent's to handle
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        return
    try:
        try:
            extractor.setup()
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
            conn.send(("setup-failed", type(exc).__name__, str(exc)))
            return
        conn.send(("ready",))
        while (task := conn.recv()) is not None:
            record, class_index = task
            result, error = work(extractor, record, class_index, timeout)
            if result is not None:
                with contextlib.suppress(Exception):  # else the parent compresses them
                    result.features = deflate_for_store(result.features, compression)
            conn.send(("result", result, error))
    except (EOFError, OSError):
        return  # the parent closed the pipe or died


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """One worker process and the parent's end of its pipe; holds at most one video."""

    def __init__(
        self,
        ctx: SpawnContext,
        extractor: Extractor,
        timeout: float,
        compression: str | None = None,
    ) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, extractor, timeout, os.getpid(), compression),
            name="vidfeat-worker",
            daemon=True,  # never outlives the parent's interpreter
        )
        with safe_path_children():  # nothing from the user's current folder (vidfeat.children)
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


# --------------------------------------------------------------------------- the pool


class WorkerPool:
    """``workers`` processes, one video each at a time (see the module docstring).

    Every video's outcome goes to the job (:meth:`Job.write` / :meth:`Job.fail`) in completion
    order, exactly once — also for a video whose worker crashed (``WorkerCrashed``) or overran
    the timeout (``Timeout``). A stop request ends the pool between videos.
    """

    def __init__(self, extractor: Extractor, workers: int, timeout: float, job: Job) -> None:
        self.extractor = extractor
        self.job = job
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
                if self.job.stop_requested:
                    break  # the videos in flight are not written; a rerun does them
                for w in self.workers:
                    self._feed(w, queue)
                busy = [w.deadline for w in self.workers if w.record is not None]
                left = min(busy, default=math.inf) - time.monotonic()
                ready = wait_any(
                    [w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers],
                    timeout=max(0.0, min(left, POLL)),
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
            w.stop(kill=w.record is not None)

    def _spawn(self) -> _Worker:
        return _Worker(self.ctx, self.extractor, self.timeout, self.job.opts.compression)

    def _feed(self, w: _Worker, queue: deque[VideoRecord]) -> None:
        if w.ready and w.record is None and queue and not self.job.stop_requested:
            r = queue.popleft()
            if not w.give(r, self.job.class_index(r), self.limit):
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
                self.job.fail(
                    record,
                    "WorkerCrashed",
                    f"{record.path}: the worker process died while extracting it "
                    f"({cause}: a crash in native code or the out-of-memory killer)",
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
            record_outcome(self.job, record, msg[1], msg[2])

    def _overdue(self, w: _Worker, queue: deque[VideoRecord]) -> None:
        record = w.record
        assert record is not None
        self._replace(w, queue)
        self.job.fail(record, *timeout_failure(record, self.timeout, True))
