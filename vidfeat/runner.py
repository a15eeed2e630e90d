"""Batch extraction over a video list: resume, shards for job arrays, workers, report, exit code.

Design: workers decode and compute; the parent alone writes shards. One writer per job keeps
shard files few and large, a crashing worker can never leave a half-written shard, and the
arrays cross the process boundary once (a pipe copy, small next to decoding + flow/network
compute). At most ``2 × workers`` videos are in flight, so memory stays bounded however long the
list is.

Job arrays: ``--shard i/N`` keeps the videos whose id hashes to i mod N (sha1 of the id, so the
split does not depend on the order of the list file). Every job writes shards and a failures file
named after its own unique job name, so N jobs — or a duplicate of one — can share a store
without locks; the reader deduplicates.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from vidfeat.errors import ConfigError, DecodeError, VidfeatError
from vidfeat.extractors import Extracted, Extractor, library_versions
from vidfeat.report import Report
from vidfeat.videolist import VideoList, VideoRecord


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
    compression: str | None = "gzip"
    float16: bool = False
    min_free_mb: float = 64.0  # stop cleanly before the disk is full
    progress: bool = True
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # join this cluster; None starts a local Ray instance
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


# --------------------------------------------------------------------------- worker side

_EXTRACTOR: Extractor | None = None


def _init_worker(extractor: Extractor) -> None:
    global _EXTRACTOR
    _EXTRACTOR = extractor
    extractor.setup()


def _work(record: VideoRecord, class_index: int | None) -> tuple[str, Extracted | None, tuple]:
    """Runs in a worker: never raises for a bad video; returns the failure instead."""
    assert _EXTRACTOR is not None
    try:
        return record.video_id, _EXTRACTOR.extract(record, class_index), ()
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
    set's ``failures-<job>.jsonl``. KeyboardInterrupt closes the current shard (its videos are
    complete) and propagates.
    """
    from vidfeat.store import FailureLog, FeatureStore, cleanup_stale_partials

    if opts.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {opts.workers})")
    if opts.limit is not None and opts.limit < 0:
        raise ConfigError(f"--limit must be >= 0 (got {opts.limit})")
    if opts.engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray (got {opts.engine!r})")
    store = FeatureStore(store_root)
    config = {**extractor.config(), **library_versions(), **storage_config(opts)}
    existing = set_name in store.sets()
    fs = store.open_set(set_name) if existing else None
    if fs is not None:
        # refuse to mix configurations before doing any work (names the differing keys)
        store.ensure_set(set_name, config)
    p = plan(videos, fs, opts)
    report = Report("extract")
    report.skipped = p.skipped_done
    if opts.dry_run:
        echo(
            f"dry run: {len(p.todo)} to extract, {p.skipped_done} already done, "
            f"{p.outside_shard} in other shards, into {Path(store_root) / set_name}"
        )
        for r in p.todo[:20]:
            echo(f"  {r.video_id}  {r.path}")
        if len(p.todo) > 20:
            echo(f"  ... and {len(p.todo) - 20} more")
        return report.finish()
    store.ensure_set(set_name, config)
    set_dir = store.set_dir(set_name)
    cleanup_stale_partials(set_dir)
    job = opts.job or default_job_name(opts.shard)
    class_of = {c: i for i, c in enumerate(videos.classes)}
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
        finally:
            bar.close()
        return report.finish()
    writer = writer_for(set_dir, job, opts)

    def handle(vid: str, result: Extracted | None, error: tuple, record: VideoRecord) -> None:
        if result is None:
            failures.add(vid, str(record.path), error[0], error[1])
            report.fail(vid, error[1])
            bar.write(f"failed {vid}: {error[1]}", file=sys.stderr)
        else:
            result.attrs["written_at"] = time.time()
            writer.add(vid, result.features, result.attrs, result.extra or None)
            report.done += 1
            for note in result.notes:
                report.note(note)
        bar.update(1)

    try:
        with writer:
            if opts.workers == 1:
                _init_worker(extractor)
                for r in p.todo:
                    handle(*_work(r, class_of.get(r.label)), r)
            else:
                _run_pool(p.todo, extractor, opts.workers, class_of, handle)
    finally:
        bar.close()
    return report.finish()


def _run_pool(todo, extractor, workers, class_of, handle) -> None:
    """Fan out over a process pool with a bounded number of videos in flight. A worker that
    dies (segfault, OOM kill) fails only the videos it held; the pool is rebuilt for the rest."""
    ctx = get_context("spawn")  # no inherited h5py/tqdm/thread state in the workers
    queue = list(reversed(todo))
    while queue:
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(extractor,)
        )
        running: dict[Future, VideoRecord] = {}
        broken = False
        try:
            while queue or running:
                while queue and len(running) < 2 * workers and not broken:
                    r = queue.pop()
                    running[pool.submit(_work, r, class_of.get(r.label))] = r
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    r = running.pop(fut)
                    try:
                        handle(*fut.result(), r)
                    except BrokenProcessPool:
                        broken = True
                        handle(
                            r.video_id,
                            None,
                            (
                                "WorkerCrashed",
                                f"{r.path}: the worker process died while extracting it",
                            ),
                            r,
                        )
                if broken:
                    # the others in flight were not at fault: retry them on a fresh pool
                    queue.extend(running.values())
                    running.clear()
                    break
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------- network extraction


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
    if opts.engine != "local":
        raise ConfigError(
            "--engine ray runs flow-field extraction; network extraction (--checkpoint) runs "
            "batched on the local device: drop --engine, or shard it with --shard i/N"
        )
    store = FeatureStore(store_root)
    config = {**config, **library_versions(), **storage_config(opts)}
    fs = store.open_set(set_name) if set_name in store.sets() else None
    if fs is not None:
        store.ensure_set(set_name, config)
    p = plan(videos, fs, opts)
    report = Report("extract")
    report.skipped = p.skipped_done
    if opts.dry_run:
        echo(
            f"dry run: {len(p.todo)} to extract, {p.skipped_done} already done, "
            f"{p.outside_shard} in other shards, into {Path(store_root) / set_name}"
        )
        return report.finish()
    store.ensure_set(set_name, config)
    set_dir = store.set_dir(set_name)
    cleanup_stale_partials(set_dir)
    job = opts.job or default_job_name(opts.shard)
    failures = FailureLog(set_dir, job)
    todo = VideoList(videos.source, p.todo, videos.classes, videos.format)
    class_of = {c: i for i, c in enumerate(videos.classes)}
    ds = dataset_factory(todo)
    ds.with_meta = True
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=opts.workers,  # workers decode the next batches while the model computes
        collate_fn=collate,
        pin_memory=device is not None and device.type == "cuda",
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
    try:
        with writer_for(set_dir, job, opts) as writer:
            for batch in loader:
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
                    writer.add(r.video_id, f, attrs, extra)
                    report.done += 1
                    if note:
                        report.note(note.split(":")[0])
                    bar.update(1)
    finally:
        bar.close()
    return report.finish()
