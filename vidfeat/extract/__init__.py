"""Extraction over a video list: resume, shards for job arrays, engines, failures, report.

One video's route, top-down: the CLI calls a use case (``extract_flow_fields`` of
:mod:`~vidfeat.extract.fields`; ``extract_rgb_features`` and its siblings of
:mod:`~vidfeat.extract.network`), which builds a task (a per-video extractor such as
:class:`~vidfeat.extract.fields.FlowFieldsExtractor`, or a network task) and calls
:func:`run_extraction`, which opens the job (:mod:`~vidfeat.extract.job`: set, class index,
plan), chooses the engine (:func:`engine_for`, here and nowhere else: :mod:`~vidfeat.extract.local`
or :mod:`~vidfeat.extract.ray`), whose worker (:mod:`~vidfeat.extract.worker`) calls the task on
the video; the result goes back to the job, which writes it into a shard of the store.

Each engine owns its resources: a task asks the engine of its run how many threads each of its
workers may use (:meth:`Engine.threads_per_worker`), never the engine's name.

Layout: ``job`` (options, plan, the open set, writing outcomes) and ``worker`` (the per-video
call) are the base; the engines ``local`` and ``ray`` import them, never the reverse; the
tasks ``fields`` (flow fields) and ``network`` (batched network features from a run) import the
base and call :func:`run_extraction`. May import vidfeat's store, decode, grid, flow, audio,
nets and train (to load runs); never fusion or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vidfeat.errors import ConfigError
from vidfeat.extract.job import DEFAULT_TIMEOUT, Job, RunOptions, open_job, parse_shard
from vidfeat.extract.worker import Extracted, Extractor
from vidfeat.report import Report
from vidfeat.videolist import VideoList

__all__ = [
    "DEFAULT_TIMEOUT",
    "Engine",
    "Extracted",
    "Extractor",
    "Job",
    "RunOptions",
    "engine_for",
    "parse_shard",
    "run_extraction",
]


class Engine(Protocol):
    """What runs a job's task on its videos, and owns the resources that takes."""

    def run(self, job: Job, task: Any) -> None:
        """Run ``task`` over the job's videos, writing into the job's set."""

    def threads_per_worker(self, opts: RunOptions) -> int:
        """The threads each of this engine's workers may use under ``opts`` (>= 1)."""


def engine_for(opts: RunOptions) -> Engine:
    """The engine ``opts.engine`` names: the one place an engine is chosen by its name.
    :func:`run_extraction` runs the job on it; a task sizes its threads by it."""
    if opts.engine == "local":
        from vidfeat.extract.local import LocalEngine

        return LocalEngine()
    if opts.engine == "ray":
        from vidfeat.extract.ray import RayEngine

        return RayEngine()
    raise ConfigError(f"--engine must be local or ray (got {opts.engine!r})")


def run_extraction(
    videos: VideoList,
    task: Any,
    store_root: str | Path,
    set_name: str,
    opts: RunOptions,
    echo: Callable[[str], Any] = print,
) -> Report:
    """Extract every planned video of ``videos`` into set ``set_name`` of the store.

    ``task`` is a per-video :class:`Extractor` or a network task (``config()`` +
    ``run_local(job)``). Returns the Report (done / skipped / failed, notes); failures are also
    appended to the set's ``failures-<job>.jsonl``. Ctrl-C or SIGTERM stops the run between
    videos: the open shard is completed, and the report says ``stopped: interrupted`` (exit code
    1). An error (e.g. a full disk) completes the current shard, prints the summary of what was
    done through ``echo`` and propagates.
    """
    config = task.config()
    engine = engine_for(opts)
    job = open_job(videos, config, store_root, set_name, opts, echo)
    if opts.dry_run:
        return job.report.finish()
    with job.running():
        engine.run(job, task)
    return job.report.finish()
