"""The Ray engine: `vidfeat extract --engine ray`, on one machine or a cluster.

The planned videos are cut into chunks; each chunk is one Ray task that runs the same extractor
and writes its own shards (job name ``<job>-c<chunk>-<attempt>``) into the shared store path —
so the store must be on a filesystem every node sees. A task whose worker dies is retried by
Ray (``max_retries``); the retry first asks the store which of its videos are already in
completed shards and skips them, and the dead attempt's partial shard is never read, so no
video is written twice or lost. The driver shows one progress bar (per finished chunk) and the
usual summary and exit code.
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


def extract_chunk(
    extractor, records, class_of: dict, store_root: str, set_name: str, job: str, chunk: int, opts
) -> dict:
    """One Ray task: extract ``records`` into shards of its own. Returns counts."""
    from vidfeat.runner import _init_worker, _work, writer_for
    from vidfeat.store import FailureLog, FeatureSet

    set_dir = Path(store_root) / set_name
    done_before = FeatureSet(set_dir).completed_ids()  # a retried chunk skips finished videos
    todo = [r for r in records if r.video_id not in done_before]
    # every attempt has its own job name: two attempts never share a shard or partial name
    attempt = f"{job}-c{chunk:05d}-{uuid.uuid4().hex[:8]}"
    out = {
        "done": 0,
        "failed": [],
        "notes": {},
        "skipped": len(records) - len(todo),
        "pid": os.getpid(),
    }
    _init_worker(extractor)
    failures = FailureLog(set_dir, attempt)
    with writer_for(set_dir, attempt, opts) as writer:
        for r in todo:
            vid, result, error = _work(r, class_of.get(r.label))
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
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
        if opts.ray_address:
            kwargs["address"] = opts.ray_address
        else:
            kwargs["num_cpus"] = max(1, opts.workers)
        ray.init(**kwargs)
    size = opts.chunk_videos or opts.shard_videos
    if size < 1:
        raise ConfigError(f"--chunk-videos must be >= 1 (got {size})")
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    task = ray.remote(
        num_cpus=opts.ray_num_cpus,
        num_gpus=opts.ray_num_gpus,
        max_retries=3,
        retry_exceptions=False,
    )(extract_chunk)
    ext_ref = ray.put(extractor)
    pending = {
        task.remote(ext_ref, c, class_of, str(store_root), set_name, job, k, opts): c
        for k, c in enumerate(chunks)
    }
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            chunk = pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task failed after all its retries
                # what its attempts completed is in the store; the rest is a failure
                from vidfeat.store import FailureLog, FeatureSet

                done = FeatureSet(store_root / set_name).completed_ids()
                log = FailureLog(store_root / set_name, job)
                for r in chunk:
                    if r.video_id in done:
                        report.done += 1
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
