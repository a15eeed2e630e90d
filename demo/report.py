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


def best_train_metrics(run: Path) -> dict | None:
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "val_prec1" in r]
    return max(rows, key=lambda r: r["val_prec1"]) if rows else None


def stored_scores(store: Path, name: str, val) -> tuple[float, float] | None:
    """Prec@1/5 on the val list of the clip scores stored with feature set ``name``."""
    fs = FeatureStore(store)
    if name not in fs.sets():
        return None
    s = fs.open_set(name)
    classes = s.config.get("classes")
    if not classes:
        return None
    order = [classes.index(c) for c in val.classes]
    probs, labels = [], []
    for r, y in zip(val.records, val.label_indices(), strict=True):
        sc = s.get_extra(r.video_id, "scores") if r.video_id in s else None
        probs.append(np.full(len(order), 1 / len(order)) if sc is None else np.asarray(sc)[order])
        labels.append(y)
    p, y = np.stack(probs), np.asarray(labels)
    return topk_accuracy(p, y, 1), topk_accuracy(p, y, 5)


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
    claims: list[tuple[str, bool]] = []

    # Table 1: StNet vs TSN on RGB
    st, ts = best_train_metrics(runs / "rgb-stnet"), best_train_metrics(runs / "rgb-tsn")
    lines += [
        "## Table 1 — RGB: StNet vs TSN (same backbone and budget)",
        "",
        "| model | Prec@1 | Prec@5 | ceiling |",
        "|---|---:|---:|---:|",
    ]
    for name, m, c in [
        ("TSN (1 frame / segment)", ts, "appearance (one RGB frame: TSN-RGB)"),
        ("StNet (super-images + TMB + TXB)", st, "appearance + motion (RGB clip: StNet)"),
    ]:
        lines.append(
            f"| {name} | {pct(m and m['val_prec1'])} | {pct(m and m['val_prec5'])} "
            f"| {pct(ceil[c])} |"
        )
    if st and ts:
        claims.append(("StNet >= TSN on RGB", st["val_prec1"] >= ts["val_prec1"]))
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
                (f"{head} > best single modality ({pct(single_best)})", r[0] > single_best)
            )
    lines += [f"| ceiling (all cues) | {pct(ceil['all cues (fusion)'])} | |", ""]
    table = out / "ensemble" / "table.csv"
    if table.exists():
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
        lines.append(f"- {'holds' if ok else '**does not hold**'}: {text}")
    lines.append("")
    times = out / "timings.tsv"
    if times.exists():
        rows = list(csv.DictReader(open(times), delimiter="\t"))
        total = sum(int(r["seconds"]) for r in rows)
        lines += [
            "## Time per stage (this run; stages skipped on a rerun are not listed)",
            "",
            "| stage | seconds |",
            "|---|---:|",
        ]
        lines += [f"| {r['stage']} | {r['seconds']} |" for r in rows]
        lines += [f"| total | {total} |", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python demo/report.py OUT")
    main(Path(sys.argv[1]))
