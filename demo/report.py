"""Write OUT/report.md: the paper's Tables 1-3 rebuilt on the synthetic data.

Reads what the demo stages left in OUT (runs' metrics, stored clip scores, fusion evals, the
ensemble table, timings) and the dataset's stated ceilings. Every number comes from a file the
pipeline wrote; each claim of the paper is checked and the report says when it does not hold.

Usage: python demo/report.py OUT
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from vidfeat.metrics import topk_accuracy
from vidfeat.plots import plot_bars
from vidfeat.store import FeatureStore
from vidfeat.synth import load_ceilings
from vidfeat.videolist import load_list


def stored_probs(store: Path, name: str, val) -> np.ndarray | None:
    """The clip scores stored with feature set ``name`` for the val videos, in the val list's
    class order ``(n, K)``; a video without scores gets uniform probabilities."""
    fs = FeatureStore(store)
    if name not in fs.sets():
        return None
    s = fs.open_set(name)
    classes = s.config.get("classes")
    if not classes:
        return None
    order = [classes.index(c) for c in val.classes]
    probs = []
    for r in val.records:
        sc = s.get_extra(r.video_id, "scores") if r.video_id in s else None
        probs.append(np.full(len(order), 1 / len(order)) if sc is None else np.asarray(sc)[order])
    return np.stack(probs)


def stored_scores(store: Path, name: str, val) -> tuple[float, float] | None:
    """Prec@1/5 on the val list of the clip scores stored with feature set ``name``."""
    p = stored_probs(store, name, val)
    if p is None:
        return None
    y = np.asarray(val.label_indices())
    return topk_accuracy(p, y, 1), topk_accuracy(p, y, 5)


def cue_ceiling(classes: list[dict], seen: tuple[str, ...], target: tuple[str, ...]) -> float:
    """Best share of (balanced) classes whose ``target`` cues a model that sees only the
    ``seen`` cues can get right: per seen-cue value, the most common target value wins."""
    groups: dict[tuple, dict[tuple, int]] = {}
    for c in classes:
        g = groups.setdefault(tuple(c[q] for q in seen), {})
        t = tuple(c[q] for q in target)
        g[t] = g.get(t, 0) + 1
    return sum(max(g.values()) for g in groups.values()) / len(classes)


def cue_accuracy(probs: np.ndarray, val, design: dict, cues: tuple[str, ...]) -> float:
    """Share of videos whose predicted class has the true class's ``cues`` (e.g. colour and
    motion: right up to what an RGB network cannot see)."""
    pred = probs.argmax(1)
    y = val.label_indices()
    key = [tuple(design[c][q] for q in cues) for c in val.classes]
    return float(np.mean([key[p] == key[t] for p, t in zip(pred, y, strict=True)]))


def fuse_eval(run: Path) -> tuple[float, float] | None:
    path = run / "eval-val" / "metrics.json"
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    return m["prec1"], m["prec5"]


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def main(out: Path) -> None:
    data, runs, store = out / "data", out / "runs", out / "store"
    ceil = load_ceilings(data)
    val = load_list(data / "val.csv")
    lines = [
        "# vidfeat demo report",
        "",
        f"Synthetic dataset: {len(val)} validation videos, {len(val.classes)} classes "
        f"(`{data / 'README.txt'}`). Prec@1 / Prec@5 in %, on the validation split. "
        "Ceilings: the Bayes accuracy of a model that sees only that modality's cues.",
        "",
    ]
    claims: list[tuple[str, bool | None]] = []  # None: not evaluated (a stage missing)

    # Table 1: StNet vs TSN on RGB, from the clip scores their extraction stored
    design = {c["name"]: c for c in json.loads((data / "synth.json").read_text())["classes"]}
    lines += [
        "## Table 1 — RGB: StNet vs TSN (same backbone and budget)",
        "",
        "Clip scores of `vidfeat extract rgb` on the test grid. *colour + motion*: the predicted "
        "class has the true class's colour and motion, i.e. right up to the sound cue no RGB "
        "network can see — the motion cue is what StNet's super-images and temporal blocks "
        "add over TSN's single frames.",
        "",
        "| model | Prec@1 | Prec@5 | ceiling | colour + motion | ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rgb_acc = {}
    for name, set_name, c in [
        ("TSN (1 frame / segment)", "rgb-tsn", "appearance (one RGB frame: TSN-RGB)"),
        ("StNet (super-images + TMB + TXB)", "rgb", "appearance + motion (RGB clip: StNet)"),
    ]:
        p = stored_probs(store, set_name, val)
        acc = stored_scores(store, set_name, val)
        cm = None if p is None else cue_accuracy(p, val, design, ("colour", "motion"))
        rgb_acc[set_name] = (acc, cm)
        seen = ("colour", "motion") if set_name == "rgb" else ("colour",)
        cm_ceiling = cue_ceiling(list(design.values()), seen, ("colour", "motion"))
        lines.append(
            f"| {name} | {pct(acc and acc[0])} | {pct(acc and acc[1])} | {pct(ceil[c])} "
            f"| {pct(cm)} | {pct(cm_ceiling)} |"
        )
    (st, st_cm), (ts, ts_cm) = rgb_acc["rgb"], rgb_acc["rgb-tsn"]
    claims.append(("StNet >= TSN on RGB (Prec@1)", None if not (st and ts) else st[0] >= ts[0]))
    claims.append(
        (
            "StNet > TSN on the motion cue (colour + motion accuracy)",
            None if st_cm is None or ts_cm is None else st_cm > ts_cm,
        )
    )
    lines.append("")

    # Table 2: each modality alone (clip scores of the extracted sets) and single heads
    lines += [
        "## Table 2 — each modality alone",
        "",
        "| modality | network clip scores P@1 | P@5 | `single` head on features P@1 | P@5 "
        "| ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    modal_ceil = {
        "rgb": "appearance + motion (RGB clip: StNet)",
        "tvl1": "motion (optical flow)",
        "farneback": "motion (optical flow)",
        "audio": "sound (audio)",
    }
    single_best = 0.0
    bars = []
    for m, c in modal_ceil.items():
        net = stored_scores(store, m, val)
        head = fuse_eval(runs / f"fuse-single-{m}")
        single_best = max([single_best] + [x[0] for x in (net, head) if x])
        if head:
            bars.append((f"single {m}", *head))
        lines.append(
            f"| {m} | {pct(net and net[0])} | {pct(net and net[1])} | "
            f"{pct(head and head[0])} | {pct(head and head[1])} | {pct(ceil[c])} |"
        )
    lines.append("")

    # Table 3: fusion heads and the ensemble
    lines += [
        "## Table 3 — fusion of rgb + tvl1 + farneback + audio",
        "",
        "| head | Prec@1 | Prec@5 |",
        "|---|---:|---:|",
    ]
    for head in ("txn", "fflstm", "attention-clusters", "itxn"):
        r = fuse_eval(runs / f"fuse-{head}")
        lines.append(f"| {head} | {pct(r and r[0])} | {pct(r and r[1])} |")
        if r:
            bars.append((head, *r))
        claims.append(
            (
                f"{head} > best single modality ({pct(single_best)})",
                None if r is None else r[0] > single_best,
            )
        )
    txn, itxn = fuse_eval(runs / "fuse-txn"), fuse_eval(runs / "fuse-itxn")
    claims.append(("itxn >= txn", None if not (txn and itxn) else itxn[0] >= txn[0]))
    lines += [f"| ceiling (all cues) | {pct(ceil['all cues (fusion)'])} | |", ""]
    table = out / "ensemble" / "table.csv"
    if not table.exists():
        claims.append(("ensemble >= best member", None))
    else:
        rows = list(csv.DictReader(open(table)))
        lines += [
            "### GBDT ensemble (out-of-fold on the validation split)",
            "",
            (out / "ensemble" / "table.md").read_text(),
            "",
        ]
        ens = next(r for r in rows if r["kind"] == "ensemble")
        members = [r for r in rows if r["kind"] == "member"]
        best_m = max(members, key=lambda r: float(r["prec1"]))
        bars.append(("GBDT ensemble", float(ens["prec1"]), float(ens["prec5"])))
        claims.append(
            (
                f"ensemble >= best member ({best_m['model']})",
                float(ens["prec1"]) >= float(best_m["prec1"]),
            )
        )
    if bars:
        plot_bars(
            bars,
            out / "report_bars.png",
            title="validation Prec@1 / Prec@5",
            refs={"fusion ceiling": ceil["all cues (fusion)"]},
        )
        lines += ["![results](report_bars.png)", ""]

    lines += ["## The paper's claims on this data", ""]
    for text, ok in claims:
        verdict = "not evaluated" if ok is None else "holds" if ok else "**does not hold**"
        lines.append(f"- {verdict}: {text}")
    lines += [
        "",
        "Model selection: every network and head keeps its best epoch by validation Prec@1 and "
        "is reported on that same split (there is no separate test split), as the paper's "
        "validation figures are; the ensemble's figures are out-of-fold.",
        "",
    ]
    times = out / "timings.tsv"
    if times.exists():
        rows = list(csv.DictReader(open(times), delimiter="\t"))
        per_stage: dict[str, int] = {}
        for r in rows:  # in order of first appearance
            per_stage[r["stage"]] = per_stage.get(r["stage"], 0) + int(r["seconds"])
        lines += [
            "## Time per stage",
            "",
            "Wall seconds, summed over every run of `demo/run.sh` on this folder (a rerun adds "
            "only what it redid: finished stages are skipped, extraction resumes).",
            "",
            "| stage | seconds |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v} |" for k, v in per_stage.items()]
        lines += [f"| total | {sum(per_stage.values())} |", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python demo/report.py OUT")
    main(Path(sys.argv[1]))
