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
tasks ``fields`` (flow fields), ``network`` (batched network features from a run) and ``rows``
(untrimmed video: a grid of rows streamed through a network or the flow method, ``(L, D)``)
import the base and call :func:`run_extraction`. May import vidfeat's store, decode, grid,
flow, audio, nets and train (to load runs); never fusion or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
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
    "refuse_foreign_options",
    "run_extraction",
]


class Engine(Protocol):
    """What runs a job's task on its videos, and owns the resources that takes."""

    name: str  # what --engine calls it
    options: tuple[str, ...]  # the RunOptions fields only this engine reads

    def run(self, job: Job, task: Any) -> None:
        """Run ``task`` over the job's videos, writing into the job's set."""

    def threads_per_worker(self, opts: RunOptions) -> int:
        """The threads each of this engine's workers may use under ``opts`` (>= 1)."""


def _engines() -> tuple[type, ...]:
    """Every engine (imported when first asked for: Ray's module loads Ray lazily too)."""
    from vidfeat.extract.local import LocalEngine
    from vidfeat.extract.ray import RayEngine

    return (LocalEngine, RayEngine)


def engine_for(opts: RunOptions) -> Engine:
    """The engine ``opts.engine`` names: the one place an engine is chosen by its name.
    :func:`run_extraction` runs the job on it; a task sizes its threads by it."""
    by_name = {engine.name: engine for engine in _engines()}
    if opts.engine not in by_name:
        raise ConfigError(f"--engine must be {' or '.join(by_name)} (got {opts.engine!r})")
    return by_name[opts.engine]()


def refuse_foreign_options(opts: RunOptions, given: Collection[str]) -> None:
    """Options that only another engine reads would do nothing on this run's: refused by flag
    when ``given`` (the names of the RunOptions fields the user set) holds one."""
    import dataclasses

    from vidfeat.params import option_flag

    mine = engine_for(opts)
    fields = {f.name: f for f in dataclasses.fields(RunOptions)}
    for other in _engines():
        foreign = [n for n in other.options if n in given and n not in mine.options]
        if foreign:
            flags = ", ".join(option_flag(fields[n]) for n in foreign)
            raise ConfigError(
                f"{flags} apply to --engine {other.name} (this run's engine is {mine.name}): "
                f"add --engine {other.name}, or leave them out"
            )


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
