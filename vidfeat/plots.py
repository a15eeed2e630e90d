"""Plots people would rather look at than read: training curves, confusion matrices, bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and Prec@1/Prec@5 per epoch from metrics.jsonl rows."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    if all("val_loss" in h for h in history):
        a.plot(ep, [h["val_loss"] for h in history], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [h["train_prec1"] for h in history], label="train Prec@1")
    if all("val_prec1" in h for h in history):
        b.plot(ep, [h["val_prec1"] for h in history], label="val Prec@1")
        b.plot(ep, [h["val_prec5"] for h in history], label="val Prec@5", ls="--")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1.02)
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (rows = true class)."""
    plt = _plt()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * k, 16), min(1.5 + 0.45 * k, 15)))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(
    rows: list[tuple[str, float, float]],
    path: str | Path,
    title: str = "",
    refs: dict[str, float] | None = None,
) -> None:
    """Horizontal bars of (name, Prec@1, Prec@5); optional reference lines (e.g. ceilings)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r[1] for r in rows], height=0.4, label="Prec@1")
    ax.barh(y + 0.2, [r[2] for r in rows], height=0.4, label="Prec@5", alpha=0.6)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    for name, v in (refs or {}).items():
        ax.axvline(v, ls=":", color="grey")
        ax.text(v, -0.7, name, fontsize=7, rotation=0, color="grey")
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
