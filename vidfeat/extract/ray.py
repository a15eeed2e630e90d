"""The Ray engine: `vidfeat extract --engine ray`, on one machine or a cluster.

The planned videos are cut into chunks; each chunk is one Ray task that runs the job's task (a
per-video extractor, or a network with its batched loop) with the local code path on a
:meth:`~vidfeat.extract.job.Job.chunk` of the job, writing its own shards (job name
``<job>-c<chunk>-<attempt>``) into the shared store path, so the store must be on a filesystem
every node sees. Tasks get the store and video paths made absolute on the driver (a task runs in
Ray's working directory, not the driver's), so they must name the same files on every node. A
task whose worker dies is retried by Ray (``max_retries``); the retry first asks the store which
of its videos are already in completed shards and skips them, and the dead attempt's partial
shard is never read, so no video is written twice or lost. Likewise the retry skips the videos
whose failure an earlier attempt of the chunk already logged (the failures file is fsync'ed line
by line), so a failure is recorded once. When the tasks are done, the driver removes the partial
shards that this job's dead attempts left (a lost node's; one whose writer still holds its lock
is left alone), so the store verifies without a stale-partial warning. The driver shows one
progress bar (per finished chunk) and the usual summary and exit code; Ctrl-C cancels the
pending tasks.

Where chunks ran: the driver appends one JSON line per finished chunk to the set's
``ray-<job>.jsonl`` (:func:`ray_log_path`): the chunk, its videos, the Ray node id, the node's
IP and host name, the worker's pid, the attempt's job name (its shards are
``part-<attempt>-<k>.h5``) and the chunk's done / skipped / failed counts. A retried chunk's line
is its last attempt's (``skipped`` counts what earlier attempts had completed); a chunk that
failed after all its retries has ``node: null`` and the ``error``. The summary line ends with
"on N Ray nodes".

A local Ray instance (no ``--ray-address``) gets every CPU of the machine, or ``--workers`` CPUs
when that is given; tasks reserve ``--ray-num-cpus`` each (``--ray-num-gpus``: a network task's
device is resolved inside the task, on its node). ``--timeout`` applies inside tasks as an alarm
(a video that overruns fails as ``Timeout``); a call that never returns to Python is not bounded
on this engine: Ray's task, not a vidfeat watchdog, owns the process.

:class:`RayEngine` is this engine as :func:`~vidfeat.extract.run_extraction` runs it, and owns
its resources: a task's videos get the ``--ray-num-cpus`` CPUs it reserves.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from vidfeat.children import outside_the_current_folder, safe_path_children
from vidfeat.errors import ConfigError
from vidfeat.extract.job import Job, RunOptions
from vidfeat.extract.local import POLL, run_local
from vidfeat.outdir import open_append
from vidfeat.store import FeatureSet, partial_is_live, read_failures
from vidfeat.videolist import VideoRecord


class RayEngine:
    """``--engine ray``: the job's videos in chunks, one Ray task each (:func:`run_on_ray`)."""

    name = "ray"
    # RunOptions fields that only this engine reads
    options: tuple[str, ...] = ("ray_address", "ray_num_cpus", "ray_num_gpus", "chunk_videos")

    def run(self, job: Job, task: Any) -> None:
        run_on_ray(job, task)

    def threads_per_worker(self, opts: RunOptions) -> int:
        """The CPUs a Ray task reserves (``--ray-num-cpus``, whole, at least 1): the task runs
        its chunk's videos one after another in its own process, on those CPUs."""
        return max(1, int(opts.ray_num_cpus))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray: pip install 'vidfeat[ray]' (or pip install ray)"
        ) from None
    return ray


def _chunk_job(job: str, chunk: int) -> str:
    return f"{job}-c{chunk:05d}"


def logged_failures(set_dir: Path, job: str, chunk: int) -> dict[str, str]:
    """Failures earlier attempts of this chunk logged: video id → message."""
    prefix = _chunk_job(job, chunk) + "-"
    return {
        f["video_id"]: str(f.get("message", ""))
        for f in read_failures(set_dir)
        if str(f.get("job", "")).startswith(prefix)
    }


def ray_log_path(set_dir: str | Path, job: str) -> Path:
    """The driver's per-chunk log of a Ray job: where each chunk ran."""
    return Path(set_dir) / f"ray-{job}.jsonl"


def _where() -> dict:
    """This task's Ray node id and IP, and the host name (provenance only)."""
    out: dict = {"node": None, "ip": None, "host": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            out["node"] = ray.get_runtime_context().get_node_id()
            out["ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - provenance only; a chunk never fails for it
        pass
    return out


def extract_chunk(task: Any, job: Job, records: list[VideoRecord], chunk: int) -> dict:
    """One Ray task: run ``task`` on ``records`` into shards of its own. Returns counts."""
    done_before = FeatureSet(job.set_dir).completed_ids()  # a retried chunk skips finished videos
    failed_before = logged_failures(job.set_dir, job.name, chunk)  # ...and failures logged
    settled = done_before | failed_before.keys()
    # every attempt has its own job name: two attempts never share a shard or partial name
    attempt = f"{_chunk_job(job.name, chunk)}-{uuid.uuid4().hex[:8]}"
    sub = job.chunk([r for r in records if r.video_id not in settled], attempt)
    run_local(sub, task, in_process=True)
    rep = sub.report
    earlier = [
        (r.video_id, failed_before[r.video_id])
        for r in records
        if r.video_id in failed_before and r.video_id not in done_before
    ]
    return {
        "done": rep.done,
        "failed": earlier + list(rep.failures),
        "notes": dict(rep.notes),
        "skipped": sum(r.video_id in done_before for r in records),
        "pid": os.getpid(),
        "attempt": attempt,
        **_where(),
    }


def token_auth_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether Ray will authenticate with a token: ``RAY_AUTH_MODE=token``, or (the mode unset)
    a token in ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``,
    which Ray then uses by itself."""
    env = os.environ if env is None else env
    mode = env.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.strip().lower() == "token"
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return os.path.isfile(path)


def unauthenticated_warning(address: str) -> str:
    return (
        f"warning: joining the Ray cluster at {address} without token authentication: anyone "
        "who reaches it can run code as this user (set RAY_AUTH_MODE=token and a token; README, "
        "'Beyond one machine')"
    )


def _ray_init(opts: RunOptions):
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
        if opts.ray_address:
            if not token_auth_enabled():
                print(unauthenticated_warning(opts.ray_address), file=sys.stderr, flush=True)
            kwargs["address"] = opts.ray_address
        elif opts.ray_local_cpus is not None:
            kwargs["num_cpus"] = max(1, opts.ray_local_cpus)
        # else Ray detects the machine's CPUs
        # a local instance's processes run with the safe path, and Ray adds the driver's
        # current folder to its workers' import path: the driver joins from an empty one
        with safe_path_children(), outside_the_current_folder():
            ray.init(**kwargs)
    return ray


def _chunks(todo: list, opts: RunOptions) -> list[list]:
    size = opts.chunk_videos or opts.shard_videos
    if size < 1:
        raise ConfigError(f"--chunk-videos must be >= 1 (got {size})")
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def run_on_ray(job: Job, task: Any) -> None:
    """Extract the job's videos with Ray tasks running ``task``; the driver only counts."""
    opts = job.opts
    device = str(getattr(task, "device", "cpu"))
    if device.startswith("cuda") and opts.ray_num_gpus <= 0:
        raise ConfigError(f"--device {device} with --engine ray needs --ray-num-gpus > 0")
    shipped = _absolute(job)
    chunks = _chunks(shipped.todo, opts)
    if not chunks:
        return
    ray = _ray_init(opts)
    remote = ray.remote(
        num_cpus=opts.ray_num_cpus,
        num_gpus=opts.ray_num_gpus,
        max_retries=3,
        retry_exceptions=False,
    )(extract_chunk)
    task_ref, job_ref = ray.put(task), ray.put(shipped)
    pending = {remote.remote(task_ref, job_ref, c, k): (k, c) for k, c in enumerate(chunks)}
    log_fd = open_append(ray_log_path(job.set_dir, job.name))  # no planted link or FIFO
    with open(log_fd, "a", encoding="utf-8", buffering=1, closefd=True) as log:
        nodes = _collect(ray, pending, job, log)
    _remove_dead_partials(job)
    job.report.where = f"on {len(nodes)} Ray node{'s' if len(nodes) != 1 else ''}"


def _absolute(job: Job) -> Job:
    """The job as its tasks get it: the store and the video paths absolute, as the driver
    resolves them (``--store store`` or a list of relative paths would otherwise be looked up
    in each task's own working directory)."""
    records = [replace(r, path=Path(os.path.abspath(r.path))) for r in job.todo]
    return replace(
        job,
        store_root=Path(os.path.abspath(job.store_root)),
        videos=replace(job.videos, records=records),
    )


def _remove_dead_partials(job: Job) -> list[Path]:
    """Once every task has ended, a partial shard of this job's attempts is a dead attempt's
    (its node lost, its worker killed): delete it and its lock file, unless the lock is still
    held (an attempt on a cut-off node may still be writing); and a lock file of this job left
    without its partial (an attempt killed right after renaming a shard). Other jobs' partials
    are left to their own jobs, or to the next run's cleanup."""
    removed = []
    for partial in sorted(Path(job.set_dir).glob(f"part-{job.name}-c*.h5.partial")):
        if partial_is_live(partial):
            continue
        for path in (partial, partial.with_name(partial.name + ".lock")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(partial)
    for lock in sorted(Path(job.set_dir).glob(f"part-{job.name}-c*.h5.partial.lock")):
        partial = lock.with_name(lock.name[: -len(".lock")])
        if not partial.exists() and not partial_is_live(partial):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    return removed


def _log(log: Any, row: dict) -> None:
    log.write(json.dumps({**row, "time": round(time.time(), 3)}) + "\n")


def _collect(ray, pending: dict, job: Job, log: Any) -> set[str]:
    """Wait for the chunk tasks, adding their counts to the job's report and a line per chunk
    to ``log``; a chunk that failed after all its retries counts what its attempts completed
    and fails the rest. Returns the ids of the nodes the chunks ran on."""
    report = job.report
    nodes: set[str] = set()
    while pending:
        if job.stop_requested:
            for ref in pending:
                ray.cancel(ref, force=True)
            return nodes
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL)
        for ref in ready:
            k, chunk = pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task failed after all its retries
                why = _chunk_failed(job, k, chunk, exc)
                _log(log, {"chunk": k, "videos": len(chunk), "node": None, "error": why})
                continue
            if res.get("node"):
                nodes.add(res["node"])
            keys = ("node", "ip", "host", "pid", "attempt", "done", "skipped")
            row = {"chunk": k, "videos": len(chunk), **{key: res.get(key) for key in keys}}
            _log(log, {**row, "failed": len(res["failed"])})
            report.done += res["done"]
            report.skipped += res["skipped"]
            for vid, msg in res["failed"]:
                report.fail(vid, msg)
                job.say(f"failed {vid}: {msg}")
            for note, n in res["notes"].items():
                report.note(note, n)
            job.progress(len(chunk))
    return nodes


def _chunk_failed(job: Job, k: int, chunk: list[VideoRecord], exc: Exception) -> str:
    """What the attempts of a dead chunk completed is in the store; the rest is a failure.
    Returns the error's last line."""
    done = FeatureSet(job.set_dir).completed_ids()
    logged = logged_failures(job.set_dir, job.name, k)
    why = (str(exc).strip().splitlines() or [""])[-1][:200]
    for r in chunk:
        if r.video_id in done:
            job.report.done += 1
            job.progress(1)
        elif r.video_id in logged:  # an attempt logged this failure already
            job.report.fail(r.video_id, logged[r.video_id])
            job.progress(1)
        else:
            job.fail(r, "RayTaskError", f"{r.path}: Ray task failed after retries ({why})")
    return why
