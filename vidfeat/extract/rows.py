"""Untrimmed video: `vidfeat extract rgb|flow|audio --grid snippets|windows`, `(L, D)` per video.

A :class:`RowTask` streams each video through decode → a batch of rows → forward → write
(:class:`~vidfeat.rowclips.RowStream` in DataLoader workers, then this process): a video of
any length is never held whole, neither its frames nor its features, since the writer
allocates the video's ``(L, D)`` array when its rows are known and fills it batch by batch
(:class:`~vidfeat.store.VideoSink`). ``--batch-size`` counts rows here, not videos. Every row
of every modality of a video has the frame indices and times its grid gives
(:class:`~vidfeat.grid.RowGrid`): the sets align row for row by construction.

A network sees each row as a one-segment clip (``[R, 1, C, S, S]``): a segment network's
temporal layers (StNet's) then see one segment, so a row's feature never depends on its
neighbours or on where a batch starts. Without a network (``extract flow`` alone) the rows'
uint8 flow fields ``(L, k, 2, H, W)`` are the set.

The use cases :func:`extract_rgb_rows`, :func:`extract_flow_rows` (the fields alone, or a
flow network on them) and :func:`extract_audio_rows` wrap the network task of a segments
extraction (its run, preprocessing, classes and provenance) for a grid of rows.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.extract.job import Job
from vidfeat.extract.network import has_classifier
from vidfeat.grid import RowGrid
from vidfeat.store import score_classes

DEFAULT_ROWS = 32  # rows per forward pass when --batch-size is not given


class RowTask:
    """A grid of rows over a list (see the module docstring). ``base``: the network task of the
    same extraction on the segments grid (None: flow fields alone); ``maker``: the row maker
    of :mod:`vidfeat.rowclips`; ``rows``: rows per forward pass."""

    def __init__(
        self,
        base: Any,
        grid: RowGrid,
        maker: Any,
        *,
        rows: int,
        fields_job: Job | None = None,
        fields_config: dict | None = None,
    ) -> None:
        if rows < 1:
            raise ConfigError(f"--batch-size must be >= 1 row (got {rows})")
        self.base, self.grid, self.maker, self.rows = base, grid, maker, int(rows)
        self.fields_job = fields_job  # --keep-fields: a Job of the fields set, written alongside
        self.fields_config = fields_config  # without a network: what the fields set records

    # ------------------------------------------------------------------ what the set records

    def config(self) -> dict:
        conf = self.base.config() if self.base is not None else self.fields_config
        assert conf is not None, "a RowTask without a network needs its fields_config"
        return rows_config(conf, self.grid)

    # ------------------------------------------------------------------ the loop

    def run_local(self, job: Job) -> None:
        from vidfeat.device import resolve_device
        from vidfeat.rowclips import RowStream

        model = prec = device = postprocess = None
        if self.base is not None:
            device = resolve_device(self.base.device)
            model, postprocess = self.base.build(device)
            prec = self.base._precision_here(model, device, job.config)
            model = prec.prepare(model).eval()
        self._classes = len(score_classes(job.config) or [])
        self._rows_done = 0
        self._norm = None
        if model is not None and self.maker.modality == "rgb":
            pre = self.base.preprocessing()
            self._norm = (pre.mean, pre.std)
        stream = RowStream(job.videos, self.grid, self.maker, self.rows)
        loader = self._loader(job, stream, device)
        sinks: dict[int, Any] = {}
        with job.writing(), self._fields_writing(), _inference(prec, device):
            try:
                for item in _items(loader, job.opts.timeout):
                    if job.stop_requested:
                        break
                    self._item(job, item, sinks, model, prec, device, postprocess)
                    job.postfix(f"{self._rows_done:,} rows")  # a long video moves the bar too
            finally:
                for sink in sinks.values():
                    for s in sink:
                        s.abort()

    @contextlib.contextmanager
    def _fields_writing(self):
        if self.fields_job is None:
            yield
            return
        with self.fields_job.writing():
            yield

    def _loader(self, job: Job, stream: Any, device: Any):
        from torch.utils.data import DataLoader

        from vidfeat.stop import ignore_stop_signals

        workers = job.opts.workers
        return DataLoader(
            stream,
            batch_size=None,  # the stream's items are batches of rows already
            num_workers=workers,
            pin_memory=device is not None and device.type == "cuda",
            worker_init_fn=ignore_stop_signals if workers > 0 else None,
            timeout=job.opts.timeout if workers > 0 else 0,
        )

    def _item(self, job: Job, item: dict, sinks: dict, model, prec, device, postprocess) -> None:
        i = item["index"]
        rec = job.todo[i]
        if "error" in item:
            for s in sinks.pop(i, ()):
                s.abort()
            job.fail(rec, *item["error"])
        elif "begin" in item:
            sinks[i] = self._begin(job, rec, item["begin"], model)
        elif "end" in item:
            main, *rest = sinks.pop(i)
            if rest:
                self.fields_job.commit(rec, rest[0])
            job.commit(rec, main)
        else:
            self._rows(sinks[i], item, model, prec, device, postprocess)

    def _begin(self, job: Job, rec, meta: dict, model) -> list:
        attrs = dict(meta["attrs"])
        L = len(meta["times"])
        idx = job.class_index(rec)
        if idx is not None:
            attrs["class_index"] = idx
        if model is None:
            k, two, h, w = meta["row_shapes"]["fields"]
            arrays = {"features": ((L, k, two, h, w), np.uint8)}
        else:
            arrays = {"features": ((L, int(job.config["feature_shape"][-1])), np.float32)}
            if has_classifier(model):
                arrays["scores"] = ((L, self._classes), np.float32)
        arrays["frame_indices"] = (meta["frame_indices"].shape, np.int64)
        arrays["times"] = ((L, 3), np.float64)
        out = [job.begin(rec, arrays, attrs)]
        if self.fields_job is not None:
            k, two, h, w = meta["row_shapes"]["fields"]
            fields = {"features": ((L, k, two, h, w), np.uint8)}
            fields.update({n: arrays[n] for n in ("frame_indices", "times")})
            out.append(self.fields_job.begin(rec, fields, dict(meta["attrs"])))
        for s in out:
            s.write("frame_indices", 0, meta["frame_indices"])
            s.write("times", 0, meta["times"])
            s.silent = attrs.get("has_audio") is False and self.maker.modality == "audio"
        return out

    def _rows(self, sinks: list, item: dict, model, prec, device, postprocess) -> None:
        import torch

        from vidfeat.clips import normalize_on_device

        main = sinks[0]
        start = item["start"]
        if "fields" in item:
            (sinks[1] if len(sinks) > 1 else main).write("features", start, item["fields"].numpy())
        if model is None:
            self._rows_done += len(item["fields"])
            return
        x = item["x"].to(device, non_blocking=True)
        if x.dtype == torch.uint8 and self._norm is not None:
            x = normalize_on_device(x, *self._norm)
        feats = model.forward_features(x)  # in _inference: no grad, the run's autocast
        scores = (
            torch.softmax(model.forward_head(feats).float(), 1) if has_classifier(model) else None
        )
        f = feats.float().cpu().numpy()[:, 0]
        if main.silent:  # no audio track: zeros (fusion masks them) and no opinion on the class
            f = np.zeros_like(f)
            scores = None if scores is None else torch.full_like(scores, 1.0 / scores.shape[1])
        elif postprocess is not None:
            f = postprocess(f)
        main.write("features", start, f)
        if scores is not None:
            main.write("scores", start, scores.cpu().numpy())
        self._rows_done += len(f)


@contextlib.contextmanager
def _inference(prec: Any, device: Any):
    """No gradients and the precision's autocast, entered once for the whole run: autocast
    casts a layer's float32 weights at their first use and keeps the copies until it exits, so
    a context per batch would cast every weight again for every batch (VGGish's 72M
    parameters: 40 % of its bf16 forward)."""
    import torch

    if prec is None:
        yield
        return
    with torch.no_grad(), prec.autocast(device):
        yield


def _items(loader, timeout: float):
    """The loader's items; an item whose decoding overruns ``--timeout`` stops the run with a
    clear error instead of hanging it."""
    from vidfeat.extract.network import _batches

    return _batches(loader, timeout, 1)


# --------------------------------------------------------------------------- use cases


def row_grid(mode: str, *, stride: int | None, window: int | None, frames: int, fps) -> RowGrid:
    """The grid of rows ``--grid``, ``--stride``, ``--window`` and ``--fps`` ask for, with
    ``frames`` per snippet (the network's, or -N)."""
    if stride is None:
        raise ConfigError(f"--grid {mode} needs --stride S (frames between rows, e.g. 16)")
    if mode == "snippets" and window is not None:
        raise ConfigError("--window applies to --grid windows; snippets take -N frames per row")
    if mode == "windows" and window is None:
        raise ConfigError("--grid windows needs --window W (frames per row, e.g. 16)")
    return RowGrid(mode, int(stride), frames=int(frames), window=int(window or 0), fps=fps)


def _window(grid: dict) -> int | None:
    """The frames per row a network is asked to read: ``--window`` on the windows grid (a
    snippet holds the network's own N)."""
    return grid.get("window") if grid.get("mode") == "windows" else None


def extract_rgb_rows(
    videos,
    store_root,
    *,
    set_name: str,
    checkpoint,
    grid: dict,
    batch_size: int | None,
    device: str,
    precision: str,
    crop_size: int | None,
    opts,
    echo=print,
):
    """``extract rgb --grid snippets|windows``: a run's features (and clip scores) per row."""
    from vidfeat.extract import run_extraction
    from vidfeat.extract.network import RGBNetwork
    from vidfeat.rowclips import RGBRows

    base = RGBNetwork(
        checkpoint,
        segments=1,
        batch_size=1,
        device=device,
        precision=precision,
        crop_size=crop_size,
        window=_window(grid),
    )
    n = base.frames()  # refuses a window the network cannot read
    g = row_grid(frames=n, **grid)
    task = RowTask(base, g, RGBRows(base.clip_spec(1, n)), rows=batch_size or DEFAULT_ROWS)
    return run_extraction(videos, task, store_root, set_name, opts, echo)


def extract_audio_rows(
    videos,
    store_root,
    *,
    set_name: str,
    checkpoint,
    pca,
    embedding,
    random_init: bool,
    grid: dict,
    frames: int,
    batch_size: int | None,
    device: str,
    precision: str,
    opts,
    echo=print,
):
    """``extract audio --grid snippets|windows``: one VGGish example per row, centred on the
    row's centre."""
    from vidfeat.extract import run_extraction
    from vidfeat.extract.network import audio_task
    from vidfeat.rowclips import AudioRows

    base = audio_task(checkpoint, echo, pca=pca, embedding=embedding,
                      random_init=random_init, segments=1, batch_size=1, device=device,
                      precision=precision)  # fmt: skip
    task = RowTask(
        base, row_grid(frames=frames, **grid), AudioRows(), rows=batch_size or DEFAULT_ROWS
    )
    return run_extraction(videos, task, store_root, set_name, opts, echo)


def rows_config(conf: dict, grid: RowGrid) -> dict:
    """What set.json records of an extraction on ``grid``: the configuration ``conf`` of the
    same extraction on the segments grid, its T and segment mode replaced by the grid, and
    ``feature_shape`` open in L."""
    conf = dict(conf)
    for k in ("T", "grid_mode", "pairs"):
        conf.pop(k, None)
    conf["grid"] = grid.config()
    conf["N"] = grid.span
    shape = list(conf.get("feature_shape") or [None, None])
    conf["feature_shape"] = [-1, *shape[1:]]
    return conf


def _fields_config(ex: Any) -> dict:
    """What a fields set of rows records (the method, its parameters, the quantisation)."""
    conf = ex.config()
    conf["feature_shape"] = [-1, ex.grid.N, 2, -1, -1]
    return conf


def extract_flow_rows(
    videos,
    store_root,
    *,
    method: str,
    params: dict,
    set_name: str,
    fields_set: str,
    checkpoint,
    grid: dict,
    frames: int,
    short_side: int,
    bound: float,
    keep_fields: bool,
    batch_size: int | None,
    device: str,
    precision: str,
    crop_size: int | None,
    opts,
    runtime: dict | None = None,
    echo=print,
):
    """``extract flow --grid snippets|windows``: without ``checkpoint`` the rows' uint8 fields
    are the set; with one, the fields of each batch of rows go straight into the flow network
    (and into ``fields_set`` too with ``keep_fields``), never all of a video's at once.
    ``short_side`` None: the network's training fields' (256 without a network)."""
    from dataclasses import replace

    from vidfeat.extract import run_extraction
    from vidfeat.extract.job import open_job

    base = None
    if checkpoint is not None:
        base = _flow_network(
            checkpoint,
            method,
            device=device,
            precision=precision,
            store_root=store_root,
            fields_set=fields_set,
            crop_size=crop_size,
            window=_window(grid),
        )
        frames = base.frames()
        base.check_bound(bound)
        short_side = short_side or base.net().config.short_side  # its training fields' scale
    elif keep_fields:
        raise ConfigError(
            "--keep-fields applies with --checkpoint: without a network the fields are the set"
        )
    short_side = short_side or 256
    if base is not None and short_side < base.crop:
        raise ConfigError(
            f"the flow network {checkpoint} takes {base.crop}-px crops of the fields, larger "
            f"than their short side {short_side}: pass --short-side {base.crop} or more (or a "
            "smaller --crop-size)"
        )
    g = row_grid(frames=frames, **grid)
    ex, maker = _flow_maker(method, params, runtime, g, short_side, bound, base, keep_fields, opts)
    fields_conf = _fields_config(ex)
    fields_job = None
    if base is not None:
        base.fields = ex
        base.fields_set = fields_set if keep_fields else None  # what set.json says it fed
        if keep_fields:
            fopts = replace(opts, retry_failed=False, limit=None, overwrite=True, float16=False)
            fields_job = open_job(
                videos, rows_config(fields_conf, g), store_root, fields_set, fopts, echo
            )
    task = RowTask(base, g, maker, rows=batch_size or DEFAULT_ROWS, fields_job=fields_job,
                   fields_config=fields_conf if base is None else None)  # fmt: skip
    return run_extraction(videos, task, store_root, set_name, opts, echo)


def _flow_network(checkpoint, method: str, **kw: Any) -> Any:
    """The flow network task of ``checkpoint``, checked against the flow method it was
    trained on."""
    from vidfeat.extract.network import FlowNetwork

    base = FlowNetwork(checkpoint, segments=1, batch_size=1, fields=None, **kw)
    run = base.net().config
    if run.method is not None and run.method != method:
        raise ConfigError(
            f"the flow network {checkpoint} was trained on {run.method} flow; pass "
            f"--method {run.method}"
        )
    return base


def _flow_maker(method, params, runtime, g: RowGrid, short_side: int, bound: float, base,
                keep_fields: bool, opts) -> tuple[Any, Any]:  # fmt: skip
    """The fields' configuration (a one-segment extractor of the row's pairs, for set.json
    and the configured method) and the row maker of the flow rows."""
    from vidfeat.extract.fields import FlowFieldsExtractor, thread_budget_for
    from vidfeat.rowclips import FlowRows

    ex = FlowFieldsExtractor(
        method,
        params=params,
        runtime=runtime,
        segments=1,
        frames=g.span,
        short_side=short_side,
        bound=bound,
        applicable_only=base is not None,
    )
    maker = FlowRows(
        ex.method,
        short_side,
        float(bound),
        crop=None if base is None else base.crop,
        keep_fields=base is None or keep_fields,
        threads=thread_budget_for(opts),
    )
    return ex, maker
