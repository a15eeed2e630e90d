"""Prec@k, mean class accuracy and the confusion matrix (numpy arrays or torch tensors)."""

from __future__ import annotations

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def topk_accuracy(scores, labels, k: int) -> float:
    """Share of rows whose label is among the k highest scores. With fewer than k classes,
    top-k is 1.0 (every class is in the top k) — never an error."""
    s, y = _np(scores), _np(labels).astype(np.int64)
    if len(y) == 0:
        return float("nan")
    if k >= s.shape[1]:
        return 1.0
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts; rows are the true class, columns the prediction."""
    p, y = _np(pred).astype(np.int64), _np(labels).astype(np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def mean_class_accuracy(pred, labels, num_classes: int) -> float:
    """Accuracy per class, averaged over the classes present in ``labels``."""
    cm = confusion_matrix(pred, labels, num_classes)
    n = cm.sum(1)
    present = n > 0
    if not present.any():
        return float("nan")
    return float((np.diag(cm)[present] / n[present]).mean())


def summarize(scores, labels, num_classes: int) -> dict:
    s = _np(scores)
    return {
        "prec1": topk_accuracy(s, labels, 1),
        "prec5": topk_accuracy(s, labels, 5),
        "mean_class_acc": mean_class_accuracy(s.argmax(1), labels, num_classes),
    }
