"""The Ray engine: `vidfeat extract --engine ray`, on one machine or a cluster.

The planned videos are cut into chunks; each chunk is one Ray task that runs the same extractor
and writes its own shards (job name ``<job>-c<chunk>-<attempt>``) into the shared store path —
so the store must be on a filesystem every node sees. A task whose worker dies is retried by
Ray (``max_retries``); the retry first asks the store which of its videos are already in
completed shards and skips them, and the dead attempt's partial shard is never read, so no
video is written twice or lost. Likewise the retry skips the videos whose failure an earlier
attempt of the chunk already logged (the failures file is fsync'ed line by line), so a failure
is recorded once. The driver shows one progress bar (per finished chunk) and the usual summary
and exit code.

A local Ray instance (no ``--ray-address``) gets every CPU of the machine, or ``--workers`` CPUs
when that is given; tasks reserve ``--ray-num-cpus`` each. ``--timeout`` applies inside tasks as
an alarm (a video that overruns fails as ``Timeout``); a call that never returns to Python is
not bounded on this engine: Ray's task, not a vidfeat watchdog, owns the process.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from vidfeat.errors import ConfigError
from vidfeat.report import Report


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
    from vidfeat.store import read_failures

    prefix = _chunk_job(job, chunk) + "-"
    return {
        f["video_id"]: str(f.get("message", ""))
        for f in read_failures(set_dir)
        if str(f.get("job", "")).startswith(prefix)
    }


def extract_chunk(
    extractor, records, class_of: dict, store_root: str, set_name: str, job: str, chunk: int, opts
) -> dict:
    """One Ray task: extract ``records`` into shards of its own. Returns counts."""
    from vidfeat.runner import _init_worker, _work, writer_for
    from vidfeat.store import FailureLog, FeatureSet

    set_dir = Path(store_root) / set_name
    done_before = FeatureSet(set_dir).completed_ids()  # a retried chunk skips finished videos
    failed_before = logged_failures(set_dir, job, chunk)  # ...and failures already logged
    settled = done_before | failed_before.keys()
    todo = [r for r in records if r.video_id not in settled]
    # every attempt has its own job name: two attempts never share a shard or partial name
    attempt = f"{_chunk_job(job, chunk)}-{uuid.uuid4().hex[:8]}"
    out = {
        "done": 0,
        "failed": [
            (r.video_id, failed_before[r.video_id])
            for r in records
            if r.video_id in failed_before and r.video_id not in done_before
        ],
        "notes": {},
        "skipped": sum(r.video_id in done_before for r in records),
        "pid": os.getpid(),
    }
    _init_worker(extractor)
    failures = FailureLog(set_dir, attempt)
    with writer_for(set_dir, attempt, opts) as writer:
        for r in todo:
            vid, result, error = _work(r, class_of.get(r.label), opts.timeout)
            if result is None:
                failures.add(vid, str(r.path), error[0], error[1])
                out["failed"].append((vid, error[1]))
                continue
            result.attrs["written_at"] = time.time()
            writer.add(vid, result.features, result.attrs, result.extra or None)
            out["done"] += 1
            for note in result.notes:
                out["notes"][note] = out["notes"].get(note, 0) + 1
    return out


def _ray_init(opts):
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
        if opts.ray_address:
            kwargs["address"] = opts.ray_address
        elif opts.ray_local_cpus is not None:
            kwargs["num_cpus"] = max(1, opts.ray_local_cpus)
        # else Ray detects the machine's CPUs
        ray.init(**kwargs)
    return ray


def _chunks(todo: list, opts) -> list[list]:
    size = opts.chunk_videos or opts.shard_videos
    if size < 1:
        raise ConfigError(f"--chunk-videos must be >= 1 (got {size})")
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _remote(ray, fn, opts):
    return ray.remote(
        num_cpus=opts.ray_num_cpus,
        num_gpus=opts.ray_num_gpus,
        max_retries=3,
        retry_exceptions=False,
    )(fn)


def run_ray(
    todo,
    extractor,
    store_root: Path,
    set_name: str,
    job: str,
    class_of: dict,
    opts,
    report: Report,
    bar,
) -> None:
    """Extract ``todo`` with Ray tasks running ``extractor`` (flow fields and the like)."""
    ray = _ray_init(opts)
    task = _remote(ray, extract_chunk, opts)
    ext_ref = ray.put(extractor)
    pending = {
        task.remote(ext_ref, c, class_of, str(store_root), set_name, job, k, opts): (k, c)
        for k, c in enumerate(_chunks(todo, opts))
    }
    _collect(ray, pending, store_root, set_name, job, report, bar)


def network_chunk(
    call, kwargs: dict, videos, records, store_root: str, set_name: str, job: str, chunk: int, opts
) -> dict:
    """One Ray task of a network extraction: ``call`` (a ``vidfeat.netextract.extract_*``
    function) on ``records`` with the local engine and a job name of its own. It plans against
    the store like any run, so a retried attempt skips what the dead one completed."""
    from dataclasses import replace

    from vidfeat.videolist import VideoList

    sub = VideoList(videos.source, records, videos.classes, videos.format)
    attempt = f"{_chunk_job(job, chunk)}-{uuid.uuid4().hex[:8]}"
    local = replace(
        opts, engine="local", job=attempt, progress=False, shard=None, limit=None, dry_run=False
    )
    rep = call(sub, Path(store_root), set_name=set_name, opts=local, echo=lambda *a: None, **kwargs)
    return {
        "done": rep.done,
        "failed": list(rep.failures),
        "notes": dict(rep.notes),
        "skipped": rep.skipped,
        "pid": os.getpid(),
    }


def run_ray_network(
    videos, call, kwargs: dict, store_root, set_name: str, opts, echo=print
) -> Report:
    """``vidfeat extract rgb|flow|audio --checkpoint ... --engine ray``: the planned videos in
    chunks, one Ray task each; every task loads the network on its node (``--ray-num-gpus``
    gives it a GPU) and runs the batched local extraction on its chunk, writing its own shards."""
    from tqdm import tqdm

    from vidfeat.runner import default_job_name, plan_report
    from vidfeat.store import FeatureStore

    store = FeatureStore(store_root)
    fs = store.open_set(set_name) if set_name in store.sets() else None
    p, report = plan_report(videos, fs, opts, Path(store_root) / set_name, echo)
    if opts.dry_run:
        return report.finish()
    job = opts.job or default_job_name(opts.shard)
    ray = _ray_init(opts)
    task = _remote(ray, network_chunk, opts)
    vl_ref = ray.put(videos)
    pending = {
        task.remote(call, kwargs, vl_ref, c, str(store_root), set_name, job, k, opts): (k, c)
        for k, c in enumerate(_chunks(p.todo, opts))
    }
    bar = tqdm(
        total=len(p.todo), desc=f"extract {set_name}", unit="video", disable=not opts.progress
    )
    try:
        _collect(ray, pending, Path(store_root), set_name, job, report, bar)
    finally:
        bar.close()
    return report.finish()


def _collect(ray, pending: dict, store_root: Path, set_name: str, job: str, report, bar) -> None:
    """Wait for the chunk tasks, adding their counts to ``report``; a chunk that failed after
    all its retries counts what its attempts completed and fails the rest."""
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            k, chunk = pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task failed after all its retries
                # what its attempts completed is in the store; the rest is a failure
                from vidfeat.store import FailureLog, FeatureSet

                done = FeatureSet(store_root / set_name).completed_ids()
                log = FailureLog(store_root / set_name, job)
                logged = logged_failures(store_root / set_name, job, k)
                for r in chunk:
                    if r.video_id in done:
                        report.done += 1
                    elif r.video_id in logged:  # an attempt logged this failure already
                        report.fail(r.video_id, logged[r.video_id])
                    else:
                        why = (str(exc).strip().splitlines() or [""])[-1][:200]
                        msg = f"{r.path}: Ray task failed after retries ({why})"
                        log.add(r.video_id, str(r.path), "RayTaskError", msg)
                        report.fail(r.video_id, msg)
                bar.update(len(chunk))
                continue
            report.done += res["done"]
            report.skipped += res["skipped"]
            for vid, msg in res["failed"]:
                report.fail(vid, msg)
                bar.write(f"failed {vid}: {msg}")
            for note, n in res["notes"].items():
                report.note(note, n)
            bar.update(len(chunk))
