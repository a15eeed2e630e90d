"""Network features: `vidfeat extract rgb|flow|audio` with a run, `(T, D)` + clip scores.

A :class:`NetworkTask` is what :func:`~vidfeat.extract.run_extraction` runs for a network:
``config()`` (what set.json records: the checkpoint's sha256 as identity, its path and the
run's training config as provenance) and ``run_local(job)``, the batched loop — clips decoded
in DataLoader workers while the model computes, several videos per forward pass. The network
is loaded where it runs (on a Ray task's node, on its device); only paths and options travel.

:class:`RGBNetwork`, :class:`FlowNetwork` and :class:`AudioNetwork` are the three tasks;
:func:`extract_rgb_features`, :func:`extract_flow_features` (fields first, then the network)
and :func:`extract_audio_features` are what the command line calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.extract import run_extraction
from vidfeat.extract.fields import ensure_flow_fields, fields_extractor_for
from vidfeat.extract.job import Job, RunOptions
from vidfeat.models.folder import is_run
from vidfeat.provenance import file_sha256
from vidfeat.report import Report
from vidfeat.stop import ignore_stop_signals
from vidfeat.videolist import VideoList, VideoRecord

Echo = Callable[[str], Any]


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


def has_classifier(model: Any) -> bool:
    """Whether ``model`` gives clip scores: a ``forward_head`` over at least one class (an
    embedding network, such as CLIP's image tower or the raw VGGish, has none)."""
    return hasattr(model, "forward_head") and getattr(model, "num_classes", 1) > 0


class NetworkTask:
    """A network over a list, batched. Subclasses say what the network is (:meth:`build`),
    what it reads (:meth:`dataset`) and what the set records (:meth:`config`)."""

    def __init__(self, *, batch_size: int, device: str, precision: str = "auto") -> None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {batch_size})")
        self.batch_size = batch_size
        self.device = device
        self.precision = precision  # as asked; checked and resolved by config() and run_local

    # ------------------------------------------------------------------ what subclasses say

    def config(self) -> dict:
        raise NotImplementedError

    def precision_config(self, model: Any) -> dict:
        """What set.json records of ``--precision``: the precision it resolves to on this
        process's device for ``model`` (compared on resume: a set never mixes precisions) and
        the memory format (informational)."""
        from vidfeat.device import resolve_device
        from vidfeat.precision import resolve_precision

        device = resolve_device(self.device) if isinstance(self.device, str) else self.device
        return resolve_precision(self.precision, device, model).record()

    def build(self, device) -> tuple[Any, Callable[[np.ndarray], np.ndarray] | None]:
        """The model on ``device`` (``forward_features`` [B, T, D]; optionally
        ``forward_head``, whose softmax is stored as ``scores``) and a postprocess of the
        stored features, if any."""
        raise NotImplementedError

    def dataset(self, videos: VideoList):
        """A clips dataset (``with_meta``) of the videos."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the batched loop

    def run_local(self, job: Job) -> None:
        import torch

        from vidfeat.clips import on_input
        from vidfeat.device import resolve_device

        device = resolve_device(self.device) if isinstance(self.device, str) else self.device
        model, postprocess = self.build(device)
        prec = self._precision_here(model, device, job.config)
        model = prec.prepare(model).eval()
        loader = self._loader(job, device)
        has_head = has_classifier(model)
        # no grad and autocast once for the run: autocast keeps the weights it cast until it
        # exits, where a context per batch would cast them all again for every batch
        with job.writing(), torch.no_grad(), prec.autocast(device):
            for batch in _batches(loader, job.opts.timeout, self.batch_size):
                if job.stop_requested:
                    break
                for idx, (cls, msg) in batch["errors"]:
                    job.fail(job.todo[idx], cls, msg)
                if "x" not in batch:
                    continue
                x = on_input(loader, batch["x"].to(device, non_blocking=True))
                feats = model.forward_features(x)
                scores = torch.softmax(model.forward_head(feats).float(), 1) if has_head else None
                feats = feats.float().cpu().numpy()
                scores = scores.cpu().numpy() if scores is not None else None
                for b, idx in enumerate(batch["index"]):
                    sc = scores[b] if scores is not None else None
                    self._write(job, job.todo[idx], batch["meta"][b], feats[b], sc, postprocess)

    def _precision_here(self, model, device, config: dict):
        """The precision on this process's device; one that differs from the set's (a Ray node
        whose device resolves ``auto`` otherwise) is refused, never mixed into the set."""
        from vidfeat.precision import resolve_precision

        prec = resolve_precision(self.precision, device, model)
        recorded = config.get("precision", prec.name)
        if recorded != prec.name:
            raise ConfigError(
                f"--precision {self.precision} runs as {prec.name} on {device} here, but the set "
                f"records {recorded}: pass --precision {recorded} (or extract on like devices)"
            )
        return prec

    def _loader(self, job: Job, device):
        from torch.utils.data import DataLoader

        from vidfeat.clips import collate

        ds = self.dataset(job.videos)
        ds.with_meta = True
        workers = job.opts.workers
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            num_workers=workers,  # workers decode the next batches while the model computes
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=ignore_stop_signals if workers > 0 else None,
            # a batch decodes in one worker: the per-video limit times the batch (0 = no limit;
            # without workers the decode runs here, where nothing can bound it)
            timeout=job.opts.timeout * self.batch_size if workers > 0 else 0,
        )

    def _write(self, job: Job, r: VideoRecord, meta: dict, f, sc, postprocess) -> None:
        attrs = dict(meta)
        note = attrs.get("note")  # kept in the attrs: why a track was unusable
        if r.label is not None:
            attrs["label"] = r.label
            index = job.class_index(r)
            if index is not None:
                attrs["class_index"] = index
        if job.config.get("modality") == "audio" and attrs.get("has_audio") is False:
            # no audio track: zeros (fusion masks them) and no opinion on the class
            f = np.zeros_like(f)
            sc = None if sc is None else np.full_like(sc, 1.0 / len(sc))
        elif postprocess is not None:
            f = postprocess(f)
        extra = {"scores": sc} if sc is not None else None
        job.write(r, f, attrs, extra, [note.split(":")[0]] if note else [])


class ModelTask(NetworkTask):
    """A model already in memory over a list (library use, tests)."""

    def __init__(
        self,
        model,
        dataset: Callable[[VideoList], Any],
        config: dict,
        *,
        batch_size: int = 4,
        device: Any = "cpu",
        postprocess: Callable | None = None,
        precision: str = "auto",
    ) -> None:
        super().__init__(batch_size=batch_size, device=device, precision=precision)
        self.model, self._dataset, self._config, self.postprocess = (
            model,
            dataset,
            config,
            postprocess,
        )

    def config(self) -> dict:
        return {**self._config, **self.precision_config(self.model)}

    def build(self, device):
        return self.model.to(device) if hasattr(self.model, "to") else self.model, self.postprocess

    def dataset(self, videos: VideoList):
        return self._dataset(videos)


def run_network_extraction(
    videos: VideoList,
    dataset_factory: Callable[[VideoList], Any],
    model,
    config: dict,
    store_root: str | Path,
    set_name: str,
    opts: RunOptions,
    *,
    batch_size: int = 4,
    device: Any = "cpu",
    echo: Echo = print,
    postprocess: Callable | None = None,
    precision: str = "auto",
) -> Report:
    """Run an in-memory ``model`` over a list (see :class:`NetworkTask` for the contract)."""
    task = ModelTask(
        model,
        dataset_factory,
        config,
        batch_size=batch_size,
        device=device,
        postprocess=postprocess,
        precision=precision,
    )
    return run_extraction(videos, task, store_root, set_name, opts, echo)


# --------------------------------------------------------------------------- trained runs


class _RunTask(NetworkTask):
    """A task whose network is a `vidfeat train` run, loaded once per process, where it runs."""

    modality = ""

    def __init__(
        self,
        checkpoint,
        *,
        segments: int,
        batch_size: int,
        device: str,
        precision: str = "auto",
        window: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, device=device, precision=precision)
        self.checkpoint = checkpoint
        self.segments = segments
        self.window = window  # a clip network's frames per row (--window), None: its own
        self._net = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_net": None}  # a Ray task loads the network on its node

    def net(self):
        if self._net is None:
            from vidfeat.models.build import load_trained

            self._net = load_trained(self.checkpoint)
            modality = self._net.config.modality
            if modality != self.modality:
                raise ConfigError(
                    f"{self.checkpoint} is a {modality} network; use `vidfeat extract {modality}`"
                )
        return self._net

    def frames(self) -> int:
        """Frames a segment (or row) of the network holds: one for TSN on RGB and per-frame
        networks, a clip network's window (``--window``, else the clip length its run records),
        StNet's and the flow networks' N."""
        from vidfeat.models.build import row_frames

        return row_frames(self.net().config, self.window, str(self.checkpoint))

    def config(self) -> dict:
        loaded = self.net()
        cfg = loaded.config
        return {
            "modality": self.modality,
            "model": f"{cfg.arch}/{cfg.backbone}" if self.modality != "audio" else "vggish",
            "checkpoint_path": str(loaded.checkpoint),
            "checkpoint_sha256": loaded.sha256,
            "run_info": asdict(cfg),  # how the network was trained (provenance)
            # the names of the scores' columns; the list's labels may be other classes (the
            # set's ``classes``, which ``class_index`` follows: see vidfeat.extract.job)
            "score_classes": loaded.classes,
            "T": self.segments,
            # frames per segment the network sees: TSN on RGB takes one (the segment's centre)
            "N": self.frames(),
            "grid_mode": "test",
            "size": cfg.size,
            "dtype": "float32",
            "feature_shape": [self.segments, int(loaded.model.feature_dim)],
            **self.precision_config(loaded.model),
        }

    def build(self, device):
        return self.net().model.to(device), None


class RGBNetwork(_RunTask):
    """An RGB run: frames prepared as the run records (an imported run: the authors' test
    resize, crop and mean/std; a vidfeat run: its training size and short side). ``crop_size``
    overrides the recorded test crop; ``grid``: ``centred`` (every modality's test grid) or
    ``reference`` (the authors' test frames), the names ``--grid`` takes."""

    modality = "rgb"
    GRID_MODES = {"centred": "test", "reference": "reference"}  # --grid → SegmentGrid mode

    def __init__(self, checkpoint, *, crop_size: int | None = None, grid: str = "centred", **kw):
        super().__init__(checkpoint, **kw)
        if grid not in self.GRID_MODES:
            raise ConfigError(f"--grid must be centred or reference (got {grid!r})")
        self.crop_size, self.grid = crop_size, self.GRID_MODES[grid]

    def preprocessing(self):
        from dataclasses import replace

        from vidfeat.models import preprocessing_of

        loaded = self.net()
        pre = preprocessing_of(loaded.path, loaded.config)
        if self.crop_size is not None:
            if self.crop_size > pre.short_side:
                raise ConfigError(
                    f"--crop-size {self.crop_size} is larger than the run's short side "
                    f"{pre.short_side}: the crop is taken from the resized frame"
                )
            pre = replace(pre, crop=self.crop_size)
        from vidfeat.nets.clipnet import CLIP_NETS, is_clip_arch

        if is_clip_arch(loaded.config.arch):
            CLIP_NETS.get(loaded.config.arch).check_crop(loaded.config.backbone, pre.crop)
        return pre

    def config(self) -> dict:
        pre = self.preprocessing()
        return {
            **super().config(),
            "size": pre.crop,
            "short_side": pre.short_side,
            "grid_mode": self.grid,
            "preprocessing_info": pre.as_dict(),  # informational: the run's sha256 fixes it
        }

    def dataset(self, videos: VideoList):
        from vidfeat.clips import RGBClips
        from vidfeat.models.build import stacks_frames

        cfg = self.net().config
        spec = self.clip_spec(self.segments, self.frames())
        layout = "stnet" if stacks_frames(cfg.arch) else "tsn"
        return RGBClips(videos, spec, layout=layout, normalize=False)  # on the device

    def clip_spec(self, segments: int, frames: int):
        """The clips of the run's test preprocessing (its resize, resampler, crop, mean/std)."""
        from vidfeat.clips import ClipSpec

        pre = self.preprocessing()
        return ClipSpec(
            segments,
            frames,
            pre.crop,
            pre.short_side,
            train=False,
            mean=pre.mean,
            std=pre.std,
            resize=pre.resize,
            test_grid=self.grid,
            resize_size=pre.resize_size,
            resampler=pre.resampler,
            interpolation=pre.interpolation,
            antialias=pre.antialias,
        )


class FlowNetwork(_RunTask):
    modality = "flow"

    def __init__(
        self, checkpoint, *, store_root, fields_set: str, fields, crop_size=None, **kw
    ) -> None:
        super().__init__(checkpoint, **kw)
        self.store_root, self.fields_set, self.fields = store_root, fields_set, fields
        self.crop_size = crop_size

    @property
    def crop(self) -> int:
        """The test crop: --crop-size, else the training crop the run recorded."""
        return self.crop_size or self.net().config.size

    def check_bound(self, bound: float, fields_set: str | None = None) -> None:
        """An imported flow network saw fields clipped to the bound its ``model.json``
        records (I3D: ±20 px): fields of another bound would be another input scale.
        ``fields_set``: the bound is that existing set's."""
        from vidfeat.models.runs import recorded_flow_bound

        want = recorded_flow_bound(self.net().path)
        if want is None or want == float(bound):
            return
        fix = f"pass --bound {want:g}"
        what = f"--bound {bound:g}"
        if fields_set is not None:
            what = f"the fields set {fields_set!r} holds fields clipped to ±{bound:g} px:"
            fix = f"pass --fields-name NEW --bound {want:g} for fields the network takes"
        raise ConfigError(
            f"{what} the flow network {self.checkpoint} takes fields clipped to ±{want:g} px "
            f"and divided by {want:g}; {fix}"
        )

    def config(self) -> dict:
        conf = super().config()
        conf.update(
            size=self.crop,
            method=self.fields.method.name,
            fields_set=self.fields_set,
            fields_config=self.fields.config(),
        )
        return conf

    def dataset(self, videos: VideoList):
        from vidfeat.clips import ClipSpec, FlowClips

        spec = ClipSpec(self.segments, self.frames(), self.crop, self.crop, train=False)
        return FlowClips(videos, spec, self.store_root, self.fields_set)


class AudioNetwork(_RunTask):
    """A `vidfeat train audio` run, or the raw VGGish embedding (``checkpoint`` = VGGish
    weights, optionally with the AudioSet PCA postprocess; no classifier, no clip scores).
    ``embedding``: the raw VGGish's embedding point (None: pre-relu); a run has its own, and
    one asked otherwise is refused."""

    modality = "audio"

    def __init__(self, checkpoint, *, pca, embedding: str | None, random_init: bool, **kw) -> None:
        super().__init__(checkpoint, **kw)
        self.pca, self.embedding, self.random_init = pca, embedding, random_init
        self.is_run = checkpoint is not None and is_run(checkpoint)
        if self.is_run and pca is not None:
            raise ConfigError(
                "--pca applies to the original VGGish embeddings, not to a trained network's; "
                "drop --pca or pass VGGish weights as --checkpoint"
            )

    def config(self) -> dict:
        conf: dict = {"modality": "audio", "T": self.segments, "N": 1, "grid_mode": "test"}
        if self.is_run:
            conf.update(super().config())
            trained = self.net().model.vggish.embedding
            if self.embedding is not None and self.embedding != trained:
                raise ConfigError(
                    f"--embedding {self.embedding}: the run {self.checkpoint} was trained with "
                    f"embedding {trained}; leave --embedding out (it is the run's)"
                )
            conf.update(embedding=trained, random_init=False)
            return conf
        conf.update(
            model="vggish", embedding=self.raw_embedding, random_init=bool(self.random_init)
        )
        if self.checkpoint is not None:
            conf["checkpoint_path"] = str(self.checkpoint)
            conf["checkpoint_sha256"] = file_sha256(self.checkpoint, "--checkpoint")
        if self.pca is not None:
            conf["pca_path"] = str(self.pca)
            conf["pca_sha256"] = file_sha256(self.pca, "--pca")
            conf["postprocess"] = (
                "pca+clip+uint8, stored dequantised as float32 (YouTube-8M: q*4/255 + 4/512 - 2)"
            )
        vggish, _ = self._vggish()  # refuses weights that do not fit before any work
        conf["feature_shape"] = [self.segments, int(vggish.embedding_dim)]
        conf["dtype"] = "float32"
        conf.update(self.precision_config(vggish))
        return conf

    @property
    def raw_embedding(self) -> str:
        return self.embedding or "pre-relu"

    def _vggish(self):
        """The raw VGGish with its weights, and the PCA postprocess (loaded once)."""
        if self._net is None:
            from vidfeat.audio import PCAPostprocess, VGGish, load_vggish_weights

            vggish = VGGish(embedding=self.raw_embedding)
            if self.checkpoint is not None:
                load_vggish_weights(vggish, self.checkpoint)
            post = PCAPostprocess.from_file(self.pca) if self.pca is not None else None
            self._net = (vggish, post)
        return self._net

    def build(self, device):
        if self.is_run:
            return super().build(device)
        vggish, post = self._vggish()
        postprocess = None
        if post is not None:

            def postprocess(f):
                return post.dequantize(post.apply(f))

        return _embedding_only(vggish).to(device), postprocess

    def dataset(self, videos: VideoList):
        from vidfeat.clips import AudioClips, ClipSpec

        return AudioClips(videos, ClipSpec(self.segments, 1, 16, 16, train=False))


def _embedding_only(vggish):
    """A raw VGGish (no classifier): features only, so no clip scores are stored."""
    import torch

    class EmbeddingOnly(torch.nn.Module):
        channels_last = vggish.channels_last

        def __init__(self) -> None:
            super().__init__()
            self.vggish = vggish

        def forward_features(self, x):
            return self.vggish.forward_features(x)

    return EmbeddingOnly()


# --------------------------------------------------------------------------- use cases


def extract_rgb_features(
    videos: VideoList,
    store_root,
    *,
    set_name: str,
    checkpoint,
    segments: int,
    batch_size: int,
    device: str,
    opts: RunOptions,
    echo: Echo = print,
    precision: str = "auto",
    crop_size: int | None = None,
    grid: str = "centred",
    window: int | None = None,
) -> Report:
    """A run's features (and clip scores) on T segments of each video. ``window``: a clip
    network's frames per segment (None: its clip length)."""
    task = RGBNetwork(
        checkpoint,
        segments=segments,
        batch_size=batch_size,
        device=device,
        precision=precision,
        crop_size=crop_size,
        grid=grid,
        window=window,
    )
    return run_extraction(videos, task, store_root, set_name, opts, echo)


def extract_flow_features(
    videos: VideoList,
    store_root,
    *,
    method: str,
    params: dict,
    fields_set: str,
    set_name: str,
    checkpoint,
    segments: int,
    short_side: int,
    bound: float,
    batch_size: int,
    device: str,
    opts: RunOptions,
    echo: Echo = print,
    precision: str = "auto",
    crop_size: int | None = None,
    flow_runtime: dict | None = None,
    given: dict | None = None,
    window: int | None = None,
) -> Report:
    """The fields first (computed where missing, into ``fields_set``), then the network.
    ``flow_runtime``: the flow method's run-time settings (see ``fields_extractor_for``);
    ``given``: the field options the user set (refused where an existing fields set or the
    network fixes them otherwise)."""
    task = FlowNetwork(
        checkpoint,
        segments=segments,
        batch_size=batch_size,
        device=device,
        precision=precision,
        store_root=store_root,
        fields_set=fields_set,
        fields=None,
        crop_size=crop_size,
        window=window,
    )
    frames = task.frames()
    task.check_bound(bound)
    asked = (given or {}).get("frames")
    if asked is not None and asked != frames:
        raise ConfigError(
            f"-N {asked}: the flow network {checkpoint} reads N={frames} pairs per segment; "
            "leave -N out (it is the run's; a clip network's window is --window)"
        )
    ex = fields_extractor_for(
        store_root,
        fields_set,
        method,
        params,
        segments,
        frames,
        short_side,
        bound,
        runtime=flow_runtime,
        given=given,
    )
    task.check_bound(ex.bound, fields_set)  # an existing fields set brings its own bound
    if ex.grid.T != segments:
        raise ConfigError(
            f"set {fields_set!r} holds fields on a T={ex.grid.T} grid, this run asks "
            f"--segments {segments}; use the same T, or --fields-name for a new fields set"
        )
    task.fields = ex
    fields_rep = ensure_flow_fields(videos, store_root, fields_set, ex, opts, echo)
    rep = run_extraction(videos, task, store_root, set_name, opts, echo)
    if fields_rep.failed:
        rep.note("without flow fields (see the fields set's failures)", fields_rep.failed)
    return rep


def extract_audio_features(
    videos: VideoList,
    store_root,
    *,
    set_name: str,
    checkpoint,
    pca,
    embedding: str | None,
    random_init: bool,
    segments: int,
    batch_size: int,
    device: str,
    opts: RunOptions,
    echo: Echo = print,
    precision: str = "auto",
) -> Report:
    """VGGish features on the grid. ``checkpoint``: VGGish weights (a state dict file, e.g.
    ``vggish-10086976.pth``) or a ``vidfeat train audio`` run (folder or a checkpoint in one);
    the run's network also stores clip scores. ``pca`` (raw VGGish only): the AudioSet
    postprocess, stored dequantised as float32 (the YouTube-8M mapping). ``embedding``: the
    raw VGGish's embedding point (None: pre-relu); with a run, None or the run's own."""
    task = audio_task(checkpoint, echo, pca=pca, embedding=embedding,
                      random_init=random_init, segments=segments, batch_size=batch_size,
                      device=device, precision=precision)  # fmt: skip
    return run_extraction(videos, task, store_root, set_name, opts, echo)


def audio_task(checkpoint, echo: Echo, **kw: Any) -> AudioNetwork:
    """The audio network task of an extraction (``kw``: :class:`AudioNetwork`'s options),
    after the warning about random weights, if any."""
    from vidfeat.audio import require_weights

    warning = require_weights(checkpoint, kw["random_init"])
    if warning:
        echo(warning)
    return AudioNetwork(checkpoint, **kw)
