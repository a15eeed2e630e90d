"""The run folder: its config, building and loading its network, its preprocessing, importing
released weights as runs, and describing any run.

A run folder (``vidfeat train``'s ``--out``) holds ``config.yaml`` (rebuilds the network and its
input pipeline), ``classes.txt`` and ``best.pt``. An *imported* run is the same folder plus
``model.json``: where the weights came from (file, sha256, importer, the Paddle → vidfeat tensor
map) and the preprocessing the weights were trained and tested with, which extraction follows.
So every command that takes a run (``extract rgb --checkpoint RUN``, ``models info RUN``,
``train --init RUN``) takes an imported one. This package owns the format; the training loop
(:mod:`vidfeat.train`) writes runs through it and nothing here imports the loop.

Modules, each importing only those listed above it:

- :mod:`~vidfeat.models.config` — :class:`TrainConfig` (what ``config.yaml`` holds),
  :func:`explicit_net_options`, and :func:`read_run_config`, which refuses, naming the file and
  the key, a ``config.yaml`` that is no run's (:class:`~vidfeat.errors.RunError`); it is
  :func:`~vidfeat.models.config.read_config`, the one reader of every run's config (fusion runs
  read their ``FuseConfig`` through it too).
- :mod:`~vidfeat.models.folder` — the one rule "a run folder, or a checkpoint inside one":
  :func:`resolve_run` → :class:`RunFolder` (folder, checkpoint, config); :func:`init_options`,
  what ``train --init RUN`` takes from the run.
- :mod:`~vidfeat.models.build` — :func:`build_model` from a config; :func:`load_trained`, a
  run's config, classes and network with its weights.
- :mod:`~vidfeat.models.runs` — the recorded test preprocessing (:func:`preprocessing_of`,
  the paper's :data:`PAPER_STNET` / :data:`PAPER_TSN`) and writing an imported run.
- :mod:`~vidfeat.models.importers` — :func:`import_paddle`, the authors' PaddlePaddle
  ``STNET.pdparams`` / ``TSN.pdparams`` (PaddlePaddle/models, ``PaddleCV/video``), mapped name
  for name by :mod:`vidfeat.nets.paddle`; :func:`import_timm`, any timm image model as a run of
  per-frame features (a ResNet-family classifier as a TSN run, its classifier as the TSN fc;
  any other model, CLIP's image towers included, as a ``frame`` run of
  :mod:`vidfeat.nets.framenet`) with timm's eval preprocessing, offline: from the local timm /
  Hugging Face cache or a state-dict file (an OpenAI / open_clip CLIP one for timm's ViT CLIP
  towers).
- :mod:`~vidfeat.models.import_i3d` — :func:`import_i3d`, two-stream I3D from the state dicts
  of the pytorch-i3d port or of video_features (told by their names, mapped strictly onto
  :class:`vidfeat.nets.i3d.InceptionI3d` with the source's padding ``convention``).
- :mod:`~vidfeat.models.import_torchvision` — :func:`import_torchvision`, torchvision's video
  classifiers (``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``, ``mvit_v1_b``, ``mvit_v2_s``,
  ``swin3d_t|s|b``) from their own weights file as ``tvvideo`` runs
  (:mod:`vidfeat.nets.tvvideo`), with the preprocessing and clip length read from torchvision's
  weights metadata at import time.
- this module — :func:`load_model`, the network of any run (trained or imported) or
  ``.pdparams`` file, in eval mode: ``model(x)`` → logits ``[B, K]`` for ``x [B, T, C, H, W]``;
  ``model.forward_features(x)`` → ``[B, T, D]`` (what extraction stores);
  ``model.forward_head(f)`` → logits from those features; :func:`describe_run`, what
  ``vidfeat models info`` prints.

The released StNet, checked layer by layer against ``stnet_res_model.py`` (identical on the
release/1.7, 1.8 and 2.0-beta branches; line numbers below are release/1.8): ResNet-50, conv1
7×7/2 on the 15-channel super-image + BN + ReLU + max pool 3×3/2 pad 1 (``net``, l. 253-265);
bottlenecks with the stride on the 3×3 conv and a projection shortcut where the shape or stride
changes (``bottleneck_block`` / ``shortcut``, l. 189-225); after Res3 and Res4 the residual TMB
``x + BN(ReLU(conv3d(x) + b))``, kernel (3,1,1) pad (1,0,0), no ReLU after the add
(``temporal_conv_bn``, l. 29-68); global average pool; the TXB: BN → dw(3) → pw(→1024) → BN+ReLU
→ dw(3) → pw, skip pw(→1024) on the BN'd input, add → BN → ReLU (``xception``, l. 70-153); max
over T, fc, softmax, no dropout (l. 298-311). BN epsilon is Fluid's default 1e-5, running
statistics at test (``is_test``). vidfeat's StNet with ``tmb=residual`` is this network (its
default ``tmb=paper`` is not, so imports set ``residual`` explicitly). TSN (``tsn_res_model.py``)
is the same ResNet; the consensus is the mean over T of the pooled features, before ``fc_0``
``[2048, K]`` (l. 144-157) — the same function as vidfeat's mean of per-segment logits, the fc
being linear; no dropout (imports set ``dropout=0``).

Where each preprocessing fact comes from (PaddlePaddle/models, ``PaddleCV/video``, release/1.8;
the same functions on release/1.7 and 2.0-beta):

- Short side 256, centre crop 256 at test (StNet): ``configs/stnet.yaml`` ``TEST``/``INFER``
  ``short_size: 256``, ``target_size: 256`` (l. 37-49); training crops 224 (``TRAIN``, l. 14-15).
  TSN: ``configs/tsn.yaml`` ``TEST`` ``short_size: 256``, ``target_size: 224`` (l. 36-39).
- The resize is **not** aspect preserving: ``reader/kinetics_reader.py`` ``group_scale``
  (l. 672-690) sets the short side to 256 and the long side to ``int(256·4/3) = 341``, a fixed
  4:3 frame, with PIL bilinear; a frame whose short side is already 256 is left as it is
  (recorded as ``resize: fixed-4:3``).
- Centre crop: ``group_center_crop`` (l. 658-669), offset ``int(round((w - 256) / 2))``.
- RGB: ``imageloader`` (l. 693-699) ``Image.open(...).convert('RGB')`` for the pkl format the
  configs use (``MODEL.format: "pkl"``); ``mp4_loader`` (l. 743) flips OpenCV's BGR to RGB.
- ``/255``, minus mean ``[0.485, 0.456, 0.406]``, divided by std ``[0.229, 0.224, 0.225]``:
  ``imgs_transform`` (l. 541-549) with ``img_mean``/``img_std`` from ``MODEL.image_mean`` /
  ``image_std`` (``configs/stnet.yaml`` l. 7-8, reshaped to ``[3, 1, 1]`` in
  ``KineticsReader.__init__``, l. 83-86).
- Super-image, frame-major (channel = 3·frame + colour): ``video_loader`` appends the N = seglen
  consecutive frames of each segment in order (l. 726-729); ``imgs_transform`` stacks them
  ``[T·N, 3, S, S]`` and reshapes to ``[T, 3N, S, S]`` (l. 550).
- N = 5: ``configs/stnet.yaml`` ``MODEL.seglen: 5`` (l. 6); T = 25 at test: ``TEST.seg_num: 25``
  (l. 38; 7 in training, ``MODEL.seg_num``, l. 5). TSN: ``seglen: 1``, ``seg_num: 3``, test 7.
- Test frames (pkl): ``video_loader`` (l. 702-731): segment i of ``L // T`` frames starts at
  ``i·(L // T)``, its N frames at offset ``((L // T) - N) // 2``, indices wrap modulo L. vidfeat's
  test grid centres the run in segments of ``L / T`` frames (:mod:`vidfeat.grid`): the same
  frames when T divides L, otherwise up to a few frames apart; recorded, not reproduced.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError
from vidfeat.models.build import LoadedNet, build_model, in_channels, load_trained
from vidfeat.models.config import (
    TrainConfig,
    config_from_mapping,
    explicit_net_options,
    read_run_config,
)
from vidfeat.models.folder import RunFolder, find_run, init_options, is_run, resolve_run
from vidfeat.models.import_i3d import import_i3d
from vidfeat.models.import_torchvision import import_torchvision
from vidfeat.models.importers import _paddle_network, import_paddle, import_timm
from vidfeat.models.runs import (
    PAPER_STNET,
    PAPER_TSN,
    ImportReport,
    Preprocessing,
    _read_model_json,
    _sha256,
    preprocessing_of,
)

log = logging.getLogger(__name__)


__all__ = [
    "PAPER_STNET",
    "PAPER_TSN",
    "ImportReport",
    "LoadedNet",
    "Preprocessing",
    "RunFolder",
    "TrainConfig",
    "build_model",
    "config_from_mapping",
    "describe_run",
    "explicit_net_options",
    "find_run",
    "import_i3d",
    "import_paddle",
    "import_timm",
    "import_torchvision",
    "in_channels",
    "init_options",
    "is_run",
    "load_model",
    "load_trained",
    "preprocessing_of",
    "read_run_config",
    "resolve_run",
]

# --------------------------------------------------------------------------- loading


def load_model(run_or_file: str | Path, device: str | Any = "cpu"):
    """The network of a run, in eval mode on ``device``.

    ``run_or_file``: a run folder (``vidfeat train`` or ``vidfeat models import``), a
    checkpoint inside one (``best.pt``, ``last.pt``), or a Paddle ``.pdparams`` file (imported
    in memory, classes numbered). Returns the network, whatever its family (a
    :class:`~vidfeat.nets.segment.SegmentNet`, an imported
    :class:`~vidfeat.nets.clipnet.ClipNet` — I3D, torchvision's video networks, a timm image
    model — or the audio network) with two extra attributes, ``classes`` (list of names; empty
    for an embedding such as CLIP's) and ``preprocessing`` (:class:`Preprocessing`)::

        model(x)                   x [B, T, C·W, H, W] → logits [B, K]
        model.forward_features(x)  → [B, T, D]   the per-row features extraction stores
        model.forward_head(f)      f [B, T, D] → logits [B, K]

    A row holds the W frames of its window stacked frame-major (frame 0's C channels first),
    as StNet's super-images; C = 3 for RGB, 2 for flow; a per-frame network (TSN, timm) takes
    ``[B, T, 3, H, W]``. ``x`` is preprocessed as ``model.preprocessing`` says.

    ``model.double()`` runs it in float64.
    """
    import torch

    from vidfeat.device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    p = Path(run_or_file)
    if p.suffix == ".pdparams" and p.is_file():
        from vidfeat.nets.paddle import load_pdparams

        net, _, _, info, _, pre = _paddle_network(load_pdparams(p), str(p))
        width = len(str(info.num_classes - 1))
        classes = [f"class_{i:0{width}d}" for i in range(info.num_classes)]
    else:
        if not p.exists():
            raise ConfigError(f"{p}: no such run folder or file")
        loaded = load_trained(p)
        net, classes = loaded.model, loaded.classes
        pre = preprocessing_of(loaded.path, loaded.config)
    net.classes = classes
    net.preprocessing = pre
    return net.to(dev).eval()


# --------------------------------------------------------------------------- describing


def describe_run(run: str | Path) -> dict:
    """What ``vidfeat models info`` prints: architecture, classes, size, preprocessing and
    where the weights came from."""
    from vidfeat.nets.backbones import count_parameters

    folder = resolve_run(run)
    run, cfg = folder.dir, folder.config
    model = load_model(run)
    meta = _read_model_json(run) or {}
    buffers = sum(
        b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")
    )
    info: dict[str, Any] = {
        "run": str(run),
        "modality": cfg.modality,
        "architecture": cfg.arch if cfg.modality != "audio" else "vggish",
        "backbone": cfg.backbone if cfg.modality != "audio" else "vggish",
        "options": dict(cfg.net_options),
        "classes": len(model.classes),
        "class_names": list(model.classes[:5]),
        "parameters": count_parameters(model),
        "statistics": buffers,
        "feature_dim": int(getattr(model, "feature_dim", 0)) or None,
        "preprocessing": model.preprocessing.as_dict(),
        "preprocessing_summary": model.preprocessing.summary(),
    }
    best = run / "best.pt"
    info["weights"] = {"file": str(best), "sha256": _sha256(best) if best.is_file() else None}
    if meta.get("origin") == "imported":
        info["origin"] = "imported"
        info["source"] = meta.get("source", {})
        info["importer"] = f"{meta.get('importer')} — {meta.get('importer_version')}"
        info["imported_at"] = meta.get("imported_at")
        info["training"] = meta.get("trained_by")
        info["classes_from"] = meta.get("classes_from")
    else:
        info["origin"] = "trained by vidfeat"
        info["training"] = _training_record(run, cfg)
        info["precision"] = cfg.precision  # what training ran in ("auto": not recorded)
    return info


def _training_record(run: Path, cfg) -> str:
    rows = []
    mpath = run / "metrics.jsonl"
    if mpath.is_file():
        for line in mpath.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    text = f"train list {cfg.train or '?'}, {cfg.epochs} epochs planned, T={cfg.segments}"
    if rows:
        key = "val_prec1" if any("val_prec1" in r for r in rows) else "train_prec1"
        best = max(rows, key=lambda r: r.get(key, -1.0))
        text += f"; {len(rows)} epochs run, best epoch {best.get('epoch')} {key} "
        text += f"{best.get(key, float('nan')):.4f}"
    return text


def format_description(info: dict) -> str:
    """The text of ``vidfeat models info``."""
    opts = ", ".join(f"{k}={v}" for k, v in info["options"].items())
    names = ", ".join(info["class_names"])
    more = ", ..." if info["classes"] > len(info["class_names"]) else ""
    lines = [
        f"run:            {info['run']}",
        f"architecture:   {info['architecture']}{f' ({opts})' if opts else ''}, {info['modality']}",
        f"backbone:       {info['backbone']}",
        f"classes:        {info['classes']} ({names}{more})",
        f"parameters:     {info['parameters']:,} (+ {info['statistics']:,} BN statistics)",
    ]
    if info.get("feature_dim"):
        lines.append(f"features:       (T, {info['feature_dim']}) per segment")
    lines.append(f"preprocessing:  {info['preprocessing_summary']}")
    for note in info["preprocessing"].get("notes", []):
        if note:
            lines.append(f"                note: {note}")
    w = info["weights"]
    lines.append(f"weights:        {w['file']} sha256 {w['sha256']}")
    if info["origin"] == "imported":
        s = info["source"]
        lines += [
            f"source:         {s.get('path')} sha256 {s.get('sha256')} "
            f"({s.get('tensors')} tensors)",
            f"importer:       {info['importer']}, {info['imported_at']}",
            f"classes from:   {info['classes_from']}",
            f"training:       {info['training']}",
        ]
    else:
        lines.append(f"training:       {info['training']}")
        prec = info.get("precision")
        ran = "not recorded (an older vidfeat)" if prec == "auto" else prec
        lines.append(f"precision:      trained in {ran}; extraction picks its own (--precision)")
    return "\n".join(lines)
