"""Classification metrics on label arrays: accuracy, macro-F1, confusion matrix, imbalance ratio.

Pure functions of numpy arrays or torch tensors (any device); no scikit-learn. ``pred`` may be
predicted labels ``(N,)`` or scores/logits ``(N, K)``, which are reduced with ``argmax``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

#: The weakest accuracy is floored at this value in :func:`imbalance_ratio` (caps it at 1000).
IMBALANCE_FLOOR = 1e-3


def as_labels(a: ArrayLike) -> np.ndarray:
    """``a`` as a flat int64 numpy array of labels; 2-D scores are reduced with ``argmax``.

    Parameters
    ----------
    a:
        Labels ``(N,)`` or scores ``(N, K)``, as a numpy array or a torch tensor on any device.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach()
        if a.ndim == 2:
            a = a.argmax(dim=1)
        a = a.cpu().numpy()
    a = np.asarray(a)
    if a.ndim == 2:
        a = a.argmax(axis=1)
    if a.ndim != 1:
        raise ValueError(f"expected labels of shape (N,) or scores of shape (N, K), got shape {a.shape}")
    return a.astype(np.int64, copy=False)


def _pair(pred: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = as_labels(pred), as_labels(y)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.shape[0]} entries but y has {t.shape[0]}")
    return p, t


def accuracy(pred: ArrayLike, y: ArrayLike) -> float:
    """Fraction of examples whose prediction equals the label.

    Parameters
    ----------
    pred:
        Predicted labels ``(N,)`` or scores ``(N, K)``.
    y:
        True labels ``(N,)``.

    Returns
    -------
    A float in ``[0, 1]``; ``nan`` when ``N = 0``.
    """
    p, t = _pair(pred, y)
    return float((p == t).mean()) if t.size else float("nan")


def confusion_matrix(pred: ArrayLike, y: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of examples of true class ``i`` predicted as class ``j`` (sklearn's layout).

    Parameters
    ----------
    pred:
        Predicted labels ``(N,)`` or scores ``(N, K)``.
    y:
        True labels ``(N,)``.
    num_classes:
        ``K``; every label must lie in ``0 .. K - 1``.
    """
    p, t = _pair(pred, y)
    for name, labels in (("pred", p), ("y", t)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}: {sorted(set(labels.tolist()))[:10]}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_f1(pred: ArrayLike, y: ArrayLike, num_classes: int) -> np.ndarray:
    """F1 of every class, ``2 TP / (2 TP + FP + FN)``; ``nan`` for a class absent from both."""
    cm = confusion_matrix(pred, y, num_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = (cm.sum(axis=0) + cm.sum(axis=1)).astype(np.float64)  # 2 TP + FP + FN
    f1 = np.full(num_classes, np.nan)
    present = denom > 0
    f1[present] = 2.0 * tp[present] / denom[present]
    return f1


def macro_f1(pred: ArrayLike, y: ArrayLike, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in ``y`` or in ``pred``.

    A class absent from both is skipped, which is what scikit-learn's
    ``f1_score(y, pred, average="macro", labels=<union of y and pred>)`` computes (and its default
    ``labels=None``); a class that occurs in only one of them counts with F1 = 0. Skipping matters
    for clients whose local data lacks some classes: they are not charged F1 = 0 for them.

    Parameters
    ----------
    pred:
        Predicted labels ``(N,)`` or scores ``(N, K)``.
    y:
        True labels ``(N,)``.
    num_classes:
        ``K``.

    Returns
    -------
    A float in ``[0, 1]``; ``nan`` when ``N = 0``.
    """
    f1 = per_class_f1(pred, y, num_classes)
    present = ~np.isnan(f1)
    return float(f1[present].mean()) if present.any() else float("nan")


def imbalance_ratio(per_modality_acc: Mapping[str, float], floor: float = IMBALANCE_FLOOR) -> float:
    """Best single-modality accuracy over the worst one (1 = balanced).

    Parameters
    ----------
    per_modality_acc:
        Modality -> accuracy of that modality alone.
    floor:
        The worst accuracy is raised to at least ``floor`` before dividing, so that a modality at
        0 % gives a large finite ratio (``best / floor``) rather than a division by zero or an
        ``inf`` that would poison averages over clients.

    Returns
    -------
    ``1.0`` with fewer than two modalities or when every accuracy is 0 (nothing to compare).
    """
    values = [float(v) for v in per_modality_acc.values() if not np.isnan(v)]
    if len(values) < 2:
        return 1.0
    best, worst = max(values), min(values)
    if best <= 0.0:
        return 1.0
    return best / max(worst, floor)
