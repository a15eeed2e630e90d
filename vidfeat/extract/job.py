"""A job: the options, the plan and the open set of one extraction run.

:func:`open_job` is the one call that prepares a run, whatever the engine: it refuses a set
whose configuration differs (naming the keys) or labels outside the set's class index, plans
which videos this job does (``--shard i/N``, resume, ``--retry-failed``, ``--limit``), creates
the set and records its classes. A :class:`Job` then owns the writing side: the shard writer,
the failures file, the progress bar, the report and the stop flag, and :meth:`Job.write` /
:meth:`Job.fail` are the one place where a video's outcome is recorded.

Class index: a set created from a labelled list records its classes (sorted labels) in
set.json, and every later list writes ``class_index`` against that stored list, so the attr
means the same within a set. A network's set does so too, whatever classes the network was
trained on: its ``scores`` are over the network's classes, which set.json names apart as
``score_classes`` (see :func:`vidfeat.store.score_classes`). Only a configuration that names
``classes`` itself (an in-memory model's) makes them the class index.

Job arrays: ``--shard i/N`` keeps the videos whose id hashes to i mod N (sha1 of the id, so the
split does not depend on the order of the list file). Every job writes shards and a failures file
named after its own unique job name, so N jobs (or a duplicate of one) can share a store
without locks; the reader deduplicates.

Imports the store, the report and the video list; never an engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.params import param
from vidfeat.provenance import library_versions
from vidfeat.report import Report
from vidfeat.stop import StopSignals
from vidfeat.store import (
    FailureLog,
    FeatureSet,
    FeatureStore,
    ShardWriter,
    StoreWarning,
    cleanup_stale_partials,
)
from vidfeat.videolist import VideoList, VideoRecord

DEFAULT_TIMEOUT = 600.0  # seconds per video: hours of 4K flow would need more; a hang never ends


@dataclass
class RunOptions:
    """How an extraction runs; each field is also an option of every `vidfeat extract`
    command (its metadata: see :func:`vidfeat.params.param`)."""

    workers: int = param(
        1,
        "Worker processes (decode + compute)",
        flags=("--workers", "-j"),
        min=0,
        unset=True,  # left out: a local Ray instance takes the machine's CPUs
        default_text="1; a local Ray instance: all CPUs",
    )
    shard: tuple[int, int] | None = param(  # (i, N), 0 <= i < N
        None, "Take shard i of N (0-based), e.g. 3/8, for job arrays.", kind=str
    )
    limit: int | None = param(None, "Process at most this many videos.", kind=int)
    dry_run: bool = param(False, "Show what would be done, write nothing.")
    retry_failed: bool = param(False, "Only the videos in the set's failures files.")
    overwrite: bool = param(False, "Redo videos already in the set (the newest copy wins).")
    job: str | None = param(
        None, "Job name in shard file names (default: time-host-pid).", kind=str
    )
    shard_videos: int = param(64, "Close a shard file after this many videos.")  # + rename it
    shard_mb: float = param(256.0, "...or after this many megabytes.")
    compression: str | None = param(
        "auto",
        "auto: gzip for integer arrays (flow fields), float features uncompressed (they barely "
        "compress; contiguous arrays read fastest).",
        choices=("auto", "gzip", "lzf", "none"),
        null="none",
    )
    float16: bool = param(False, "Store float features as float16.")
    min_free_mb: float = param(  # stop cleanly before the disk is full
        64.0, "Stop cleanly when the store's disk has less free space than this."
    )
    progress: bool = param(True, "No progress bar.", flags=("--quiet", "-q"))
    timeout: float = param(  # per video, seconds; 0 = no limit
        DEFAULT_TIMEOUT,
        "Seconds one video may take; past it the video fails as Timeout and the run goes on "
        "(0 = no limit; with --workers 1 it then runs in this process). With --checkpoint a "
        "stuck decode stops the run instead of hanging it.",
        min=0,
    )
    engine: str = param(  # local | ray
        "local",
        "local processes, or Ray tasks (pip install 'vidfeat[ray]').",
        choices=("local", "ray"),
    )
    ray_address: str | None = param(  # None starts a local Ray instance
        None, "Join this Ray cluster (default: start a local one).", kind=str
    )
    # CPUs of a local Ray instance (--workers as given); None = the machine's
    ray_local_cpus: int | None = None
    ray_num_cpus: float = param(1.0, "CPUs reserved per Ray task.")
    ray_num_gpus: float = param(0.0, "GPUs reserved per Ray task.")
    chunk_videos: int | None = param(
        None, "Videos per Ray task (default: --shard-videos).", kind=int
    )


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


# --------------------------------------------------------------------------- class index


def set_classes(
    store: FeatureStore, set_name: str, config: dict, videos: VideoList, stored: dict | None
) -> list[str] | None:
    """The class index ``class_index`` attrs follow: the classes the configuration names
    (an in-memory model's, given by its caller), else the classes the set recorded when it was
    created, else (new set) this list's sorted labels. A label outside it is refused before
    any work. A network's classes are not the index: they name its scores
    (``score_classes``), and the list's labels may be others."""
    if "classes" in config:
        classes: list[str] | None = list(config["classes"])
        whose = f"the {len(classes)} classes of the extraction's configuration"
        fix = "extract a list labelled with those classes"
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


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    todo: list[VideoRecord]
    skipped_done: int
    outside_shard: int
    total: int


def plan(videos: VideoList, fs: FeatureSet | None, opts: RunOptions) -> Plan:
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


def _print_dry_run(p: Plan, set_dir: Path, echo: Callable[[str], Any]) -> None:
    echo(
        f"dry run: {len(p.todo)} to extract, {p.skipped_done} already done, "
        f"{p.outside_shard} in other shards, into {set_dir}"
    )
    for r in p.todo[:20]:
        echo(f"  {r.video_id}  {r.path}")
    if len(p.todo) > 20:
        echo(f"  ... and {len(p.todo) - 20} more")


# --------------------------------------------------------------------------- the job


@dataclass
class Job:
    """One run over a planned list, writing into one set.

    Picklable (the Ray engine ships it to its tasks, which make :meth:`chunk` jobs of it); the
    writing side (writer, failures file, bar, stop flag) lives only while :meth:`running` /
    :meth:`writing` are entered, in the process that writes.
    """

    store_root: Path
    set_name: str
    config: dict
    videos: VideoList  # the planned videos, labelled against ``classes``
    classes: list[str] | None
    opts: RunOptions
    name: str
    report: Report = field(default_factory=lambda: Report("extract"))
    echo: Callable[[str], Any] = print
    _added: list[str] = field(default_factory=list, repr=False)
    _writer: ShardWriter | None = field(default=None, repr=False)
    _failures: FailureLog | None = field(default=None, repr=False)
    _bar: Any = field(default=None, repr=False)
    _stop: StopSignals | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(echo=print, _writer=None, _failures=None, _bar=None, _stop=None, _added=[])
        return state

    @property
    def set_dir(self) -> Path:
        return Path(self.store_root) / self.set_name

    @property
    def todo(self) -> list[VideoRecord]:
        return self.videos.records

    @property
    def class_of(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes or [])}

    def class_index(self, record: VideoRecord) -> int | None:
        return self.class_of.get(record.label) if record.label is not None else None

    @property
    def stop_requested(self) -> bool:
        """Ctrl-C or SIGTERM arrived: engines check this between videos and end cleanly."""
        return self._stop is not None and self._stop.requested

    # ------------------------------------------------------------------ running / writing

    @contextlib.contextmanager
    def running(self) -> Iterator[Job]:
        """The driver's side of a run: progress bar and stop flag. A stop request ends the
        run with ``stopped: interrupted`` in the report; an error (a full disk, a worker that
        cannot start) prints the summary of what was done, then propagates."""
        from tqdm import tqdm

        self._bar = tqdm(
            total=len(self.todo),
            desc=f"extract {self.set_name}",
            unit="video",
            disable=not self.opts.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            with StopSignals() as self._stop:
                yield self
            if self._stop.requested:
                self.report.stop("interrupted")
        except BaseException as exc:
            self._bar.close()
            self.report.stop(
                "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
            )
            self.echo(self.report.finish().summary())
            raise
        finally:
            self._bar.close()
            self._stop = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[Job]:
        """The writer's side: shard writer and failures file of this job. Leaving it closes
        the open shard, so every video counted as done is in a completed shard; after an
        abnormal stop the count is corrected to what a rerun will find."""
        opts = self.opts
        self._failures = FailureLog(self.set_dir, self.name)
        self._writer = ShardWriter(
            self.set_dir,
            self.name,
            max_videos=opts.shard_videos,
            max_mb=opts.shard_mb,
            compression=opts.compression,
            float16=opts.float16,
            min_free_mb=opts.min_free_mb,
        )
        try:
            with self._writer:
                yield self
        except BaseException:
            self.report.done = self._kept()
            raise
        finally:
            self._writer = None

    def _kept(self) -> int:
        """How many of the videos this run added are in completed shards."""
        try:
            with FeatureSet(self.set_dir) as fs:
                done = fs.completed_ids()
        except (VidfeatError, OSError):
            return len(self._added)
        return sum(v in done for v in self._added)

    # ------------------------------------------------------------------ outcomes

    def write(
        self,
        record: VideoRecord,
        features: Any,
        attrs: dict,
        extra: dict | None = None,
        notes: list[str] | tuple[str, ...] = (),
    ) -> None:
        """Store one video (the writer renames the shard when it is full)."""
        assert self._writer is not None, "Job.write outside Job.writing()"
        attrs["written_at"] = time.time()
        self._added.append(record.video_id)  # before add: a stop inside it may still complete
        self._writer.add(record.video_id, features, attrs, extra or None)  # the shard
        self.report.done += 1
        for note in notes:
            self.report.note(note)
        self.progress(1)

    def begin(self, record: VideoRecord, arrays: dict, attrs: dict) -> Any:
        """Start one video written row by row (:class:`~vidfeat.store.VideoSink`): ``arrays``
        name → (shape, dtype), ``features`` first. :meth:`commit` completes it."""
        from vidfeat.store import VideoSink

        assert self._writer is not None, "Job.begin outside Job.writing()"
        attrs["written_at"] = time.time()
        return VideoSink(self._writer, record.video_id, arrays, attrs)

    def commit(
        self, record: VideoRecord, sink: Any, notes: list[str] | tuple[str, ...] = ()
    ) -> None:
        """A video begun with :meth:`begin` is complete (the writer may rotate the shard)."""
        self._added.append(record.video_id)
        sink.commit()
        self.report.done += 1
        for note in notes:
            self.report.note(note)
        self.progress(1)

    def fail(self, record: VideoRecord, error_class: str, message: str) -> None:
        """Record one failed video in the failures file and the report; the run goes on."""
        if self._failures is None:
            self._failures = FailureLog(self.set_dir, self.name)
        self._failures.add(record.video_id, str(record.path), error_class, message)
        self.report.fail(record.video_id, message)
        self.say(f"failed {record.video_id}: {message}")
        self.progress(1)

    def progress(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def postfix(self, text: str) -> None:
        """A note beside the progress bar (e.g. the rows of the video being extracted)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def say(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)

    def chunk(self, records: list[VideoRecord], name: str) -> Job:
        """A job over some of this job's videos with a name of its own (a Ray task's)."""
        videos = replace(self.videos, records=list(records))
        opts = replace(self.opts, progress=False, job=name)
        return replace(self, videos=videos, opts=opts, name=name, report=Report("extract"))


def open_job(
    videos: VideoList,
    config: dict,
    store_root: str | Path,
    set_name: str,
    opts: RunOptions,
    echo: Callable[[str], Any] = print,
) -> Job:
    """Validate, plan and (unless ``--dry-run``) create the set: everything a run needs before
    its first video. With ``--dry-run`` the plan is printed and the returned job has nothing
    to do."""
    check_options(opts)
    store = FeatureStore(store_root)
    config = {**config, **library_versions(), **storage_config(opts)}
    fs = store.open_set(set_name) if set_name in store.sets() else None
    # refuse to mix configurations (names the differing keys) or labels before doing any work
    stored = store.ensure_set(set_name, config) if fs is not None else None
    classes = set_classes(store, set_name, config, videos, stored)
    p = plan(videos, fs, opts)
    if fs is not None:
        fs.close()
    report = Report("extract")
    report.skipped = p.skipped_done
    set_dir = Path(store_root) / set_name
    if opts.dry_run:
        _print_dry_run(p, set_dir, echo)
        p.todo = []
    else:
        if stored is None:
            stored = _create_set(store, set_name, config, classes)
            classes = set_classes(store, set_name, config, videos, stored)
        cleanup_stale_partials(store.set_dir(set_name))
    todo = VideoList(videos.source, p.todo, classes or videos.classes, videos.format)
    return Job(
        store_root=Path(store_root),
        set_name=set_name,
        config=stored if stored is not None else config,
        videos=todo,
        classes=classes,
        opts=opts,
        name=opts.job or default_job_name(opts.shard),
        report=report,
        echo=echo,
    )
