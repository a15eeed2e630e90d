"""`vidfeat extract rgb|flow|audio` with a network: features `(T, D)` + clip scores per video.

Each function resolves the checkpoint, builds the test-mode clip dataset on the grid and hands
both to :func:`vidfeat.runner.run_network_extraction` (resume, shards, failures, batching).
The set's ``set.json`` records the checkpoint's sha256 (its identity) and, as provenance that
is never compared, its path and the run's training config.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from vidfeat.errors import ConfigError
from vidfeat.provenance import file_sha256
from vidfeat.report import Report
from vidfeat.runner import RunOptions, run_extraction, run_network_extraction
from vidfeat.videolist import VideoList


def _net_config(loaded, modality: str, segments: int) -> dict:
    cfg = loaded.config
    return {
        "modality": modality,
        "model": f"{cfg.arch}/{cfg.backbone}" if modality != "audio" else "vggish",
        "checkpoint_path": str(loaded.checkpoint),
        "checkpoint_sha256": loaded.sha256,
        "run_info": asdict(cfg),  # how the network was trained (provenance)
        "classes": loaded.classes,
        "T": segments,
        # frames per segment the network sees: TSN on RGB takes one (the segment's centre)
        "N": 1 if (modality == "rgb" and cfg.arch == "tsn") else cfg.frames,
        "grid_mode": "test",
        "size": cfg.size,
        "dtype": "float32",
        "feature_shape": [segments, int(loaded.model.feature_dim)],
    }


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
    echo=print,
) -> Report:
    from vidfeat.clips import ClipSpec, RGBClips
    from vidfeat.device import resolve_device
    from vidfeat.train import load_trained

    if opts.engine == "ray":
        kwargs = dict(checkpoint=checkpoint, segments=segments, batch_size=batch_size)
        return _on_ray(
            videos, extract_rgb_features, kwargs, device, store_root, set_name, opts, echo
        )
    dev = resolve_device(device)
    net = load_trained(checkpoint, dev)
    cfg = net.config
    if cfg.modality != "rgb":
        raise ConfigError(
            f"{checkpoint} is a {cfg.modality} network; use `vidfeat extract {cfg.modality}`"
        )
    _check_classes(videos, net.classes)
    from vidfeat.models import preprocessing_of

    pre = preprocessing_of(net.path, cfg)  # an imported run's own resize/crop/mean/std
    spec = ClipSpec(
        segments,
        cfg.frames,
        pre.crop,
        pre.short_side,
        train=False,
        mean=pre.mean,
        std=pre.std,
        resize=pre.resize,
    )
    return run_network_extraction(
        videos,
        lambda vl: RGBClips(vl, spec, layout=cfg.arch),
        net.model,
        {
            **_net_config(net, "rgb", segments),
            "short_side": pre.short_side,
            "preprocessing_info": pre.as_dict(),  # informational: run sha256 fixes it
        },
        store_root,
        set_name,
        opts,
        batch_size=batch_size,
        device=dev,
        echo=echo,
    )


def fields_extractor_for(
    store_root,
    fields_set: str,
    method: str,
    params: dict,
    segments: int,
    frames: int,
    short_side: int,
    bound: float,
):
    """The extractor that fills ``fields_set``: rebuilt from its set.json when it exists, so
    resuming never mixes configurations; otherwise from the given options."""
    from vidfeat.extractors import FlowFieldsExtractor
    from vidfeat.flow import make_method
    from vidfeat.store import FeatureStore

    store = FeatureStore(store_root)
    if fields_set in store.sets():
        c = store.open_set(fields_set).config
        if c.get("method") != method:
            raise ConfigError(f"set {fields_set!r} holds {c.get('method')} flow, not {method}")
        return FlowFieldsExtractor(
            make_method(method, **c["method_params"]),
            segments=int(c["T"]),
            frames=int(c["N"]),
            short_side=int(c["short_side"]),
            bound=float(c["quantization"]["bound"]),
        )
    return FlowFieldsExtractor(
        make_method(method, **params),
        segments=segments,
        frames=frames,
        short_side=short_side,
        bound=bound,
    )


def ensure_flow_fields(
    videos: VideoList, store_root, fields_set: str, extractor, opts: RunOptions, echo=print
) -> Report:
    """Compute the fields of the videos not yet in ``fields_set`` (the runner; resumable)."""
    rep = run_extraction(
        videos,
        extractor,
        store_root,
        fields_set,
        RunOptions(
            **{
                **asdict(opts),
                "retry_failed": False,
                "limit": None,
                "overwrite": False,
                "dry_run": opts.dry_run,
            }
        ),
        echo=echo,
    )
    if rep.done:
        echo(f"flow fields: {rep.summary()}")
    return rep


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
    echo=print,
) -> Report:
    from vidfeat.clips import ClipSpec, FlowClips
    from vidfeat.device import resolve_device
    from vidfeat.train import load_trained

    dev = resolve_device(device)
    net = load_trained(checkpoint, dev)
    cfg = net.config
    if cfg.modality != "flow":
        raise ConfigError(f"{checkpoint} is a {cfg.modality} network, not a flow network")
    _check_classes(videos, net.classes)
    ex = fields_extractor_for(
        store_root, fields_set, method, params, segments, cfg.frames, short_side, bound
    )
    if ex.grid.T != segments:
        raise ConfigError(
            f"set {fields_set!r} holds fields on a T={ex.grid.T} grid, this run asks "
            f"--segments {segments}; use the same T, or --fields-name for a new fields set"
        )
    fields_rep = ensure_flow_fields(videos, store_root, fields_set, ex, opts, echo)
    if opts.engine == "ray":  # the fields exist now: the chunks run the network only
        kwargs = dict(
            method=method,
            params=params,
            fields_set=fields_set,
            checkpoint=checkpoint,
            segments=segments,
            short_side=short_side,
            bound=bound,
            batch_size=batch_size,
        )
        rep = _on_ray(
            videos, extract_flow_features, kwargs, device, store_root, set_name, opts, echo
        )
        if fields_rep.failed:
            rep.note("without flow fields (see the fields set's failures)", fields_rep.failed)
        return rep
    spec = ClipSpec(segments, cfg.frames, cfg.size, cfg.size, train=False)
    conf = _net_config(net, "flow", segments)
    conf.update(method=method, fields_set=fields_set, fields_config=ex.config())
    rep = run_network_extraction(
        videos,
        lambda vl: FlowClips(vl, spec, store_root, fields_set),
        net.model,
        conf,
        store_root,
        set_name,
        opts,
        batch_size=batch_size,
        device=dev,
        echo=echo,
    )
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
    embedding: str,
    random_init: bool,
    segments: int,
    batch_size: int,
    device: str,
    opts: RunOptions,
    echo=print,
) -> Report:
    """VGGish features on the grid. ``checkpoint``: VGGish weights (a state dict file, e.g.
    ``vggish-10086976.pth``) or a ``vidfeat train audio`` run (folder or a checkpoint in one);
    the run's network also stores clip scores. ``pca`` (raw VGGish only): the AudioSet
    postprocess, stored dequantised as float32 in [-2, 2]."""
    from vidfeat.audio import VGGish, load_vggish_weights, require_weights
    from vidfeat.clips import AudioClips, ClipSpec
    from vidfeat.device import resolve_device

    warning = require_weights(checkpoint, random_init)
    if warning:
        echo(warning)
    if opts.engine == "ray":
        kwargs = dict(
            checkpoint=checkpoint,
            pca=pca,
            embedding=embedding,
            random_init=random_init,
            segments=segments,
            batch_size=batch_size,
        )
        return _on_ray(
            videos, extract_audio_features, kwargs, device, store_root, set_name, opts, echo
        )
    dev = resolve_device(device)
    spec = ClipSpec(segments, 1, 16, 16, train=False)  # crop sizes do not apply to audio
    conf: dict = {"modality": "audio", "T": segments, "N": 1, "grid_mode": "test"}
    postprocess = None
    if checkpoint is not None and _is_run(Path(checkpoint)):
        from vidfeat.train import load_trained

        if pca is not None:
            raise ConfigError(
                "--pca applies to the original VGGish embeddings, not to a trained network's; "
                "drop --pca or pass VGGish weights as --checkpoint"
            )
        net = load_trained(checkpoint, dev)
        if net.config.modality != "audio":
            raise ConfigError(f"{checkpoint} is a {net.config.modality} network, not audio")
        _check_classes(videos, net.classes)
        model = net.model
        conf.update(_net_config(net, "audio", segments))
        conf.update(embedding=model.vggish.embedding, random_init=False)
    else:
        vggish = VGGish(embedding=embedding)
        conf.update(model="vggish", embedding=embedding, random_init=bool(random_init))
        if checkpoint is not None:
            load_vggish_weights(vggish, checkpoint)
            conf["checkpoint_path"] = str(checkpoint)
            conf["checkpoint_sha256"] = file_sha256(checkpoint)
        if pca is not None:
            from vidfeat.audio import PCAPostprocess

            post = PCAPostprocess.from_file(pca)
            conf["pca_path"] = str(pca)
            conf["pca_sha256"] = file_sha256(pca)
            conf["postprocess"] = "pca+clip+uint8, stored dequantised as float32 in [-2, 2]"

            def postprocess(f):
                return post.dequantize(post.apply(f))

        conf["feature_shape"] = [segments, int(vggish.embedding_dim)]
        conf["dtype"] = "float32"
        model = _embedding_only(vggish)
    model.to(dev)
    return run_network_extraction(
        videos,
        lambda vl: AudioClips(vl, spec),
        model,
        conf,
        store_root,
        set_name,
        opts,
        batch_size=batch_size,
        device=dev,
        echo=echo,
        postprocess=postprocess,
    )


def _on_ray(videos, call, kwargs, device, store_root, set_name, opts, echo) -> Report:
    """Run ``call`` over chunks of the list as Ray tasks (:func:`vidfeat.engines.run_ray_network`).
    The device is resolved inside each task, on its node (a GPU task sees its own GPU)."""
    from vidfeat.engines import run_ray_network

    if device.startswith("cuda") and opts.ray_num_gpus <= 0:
        raise ConfigError(f"--device {device} with --engine ray needs --ray-num-gpus > 0")
    kwargs = {**kwargs, "device": device}
    return run_ray_network(videos, call, kwargs, store_root, set_name, opts, echo)


def _is_run(p: Path) -> bool:
    """A `vidfeat train` run folder, or a checkpoint file inside one."""
    return (p / "config.yaml").is_file() if p.is_dir() else (p.parent / "config.yaml").is_file()


def _embedding_only(vggish):
    """A raw VGGish (no classifier): features only, so no clip scores are stored."""
    import torch

    class EmbeddingOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vggish = vggish

        def forward_features(self, x):
            return self.vggish.forward_features(x)

    return EmbeddingOnly()


def _check_classes(videos: VideoList, classes: list[str]) -> None:
    """A labelled list must use the network's classes (unknown labels are an error)."""
    unknown = sorted({r.label for r in videos.records if r.label is not None} - set(classes))
    if unknown:
        raise ConfigError(
            f"labels {unknown[:5]} of {videos.source} are not classes of the network "
            f"({len(classes)} classes)"
        )
