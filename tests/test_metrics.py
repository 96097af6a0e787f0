"""Metrics on hand-computed examples: accuracy, confusion matrix, macro-F1, imbalance ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmm.metrics import accuracy, confusion_matrix, imbalance_ratio, macro_f1, per_class_f1

Y = [0, 0, 1, 1, 2, 2]
PRED = [0, 1, 1, 1, 2, 0]


def test_accuracy_by_hand() -> None:
    assert accuracy(np.array(PRED), np.array(Y)) == pytest.approx(4 / 6)
    assert accuracy(torch.tensor(PRED), torch.tensor(Y)) == pytest.approx(4 / 6)
    logits = torch.nn.functional.one_hot(torch.tensor(PRED), 3).float() * 2.0 - 0.5
    assert accuracy(logits, torch.tensor(Y)) == pytest.approx(4 / 6)  # scores reduce by argmax
    assert math.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_confusion_matrix_by_hand() -> None:
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])  # rows: true class, columns: predicted
    assert np.array_equal(confusion_matrix(PRED, Y, 3), expected)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="entries"):
        confusion_matrix([0, 1, 1], [0, 1], 3)


def test_macro_f1_by_hand() -> None:
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 1, FP 0, FN 1 -> 2/3
    f1 = (0.5 + 0.8 + 2 / 3) / 3
    assert np.allclose(per_class_f1(PRED, Y, 3), [0.5, 0.8, 2 / 3])
    assert macro_f1(PRED, Y, 3) == pytest.approx(f1)
    assert macro_f1(torch.tensor(PRED), torch.tensor(Y), 3) == pytest.approx(f1)


def test_macro_f1_skips_classes_absent_from_both() -> None:
    # classes 3 and 4 occur nowhere: skipped, not counted as F1 = 0
    assert macro_f1(PRED, Y, 5) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # class 1 occurs only as a (wrong) prediction: it counts with F1 = 0; class 2 is skipped
    assert macro_f1([0, 1], [0, 0], 3) == pytest.approx((2 / 3 + 0.0) / 2)
    assert macro_f1([1, 1], [1, 1], 3) == pytest.approx(1.0)


def test_imbalance_ratio() -> None:
    assert imbalance_ratio({"a": 0.8, "v": 0.4}) == pytest.approx(2.0)
    assert imbalance_ratio({"a": 0.3, "v": 0.6, "t": 0.45}) == pytest.approx(2.0)
    assert imbalance_ratio({"a": 0.7}) == 1.0
    assert imbalance_ratio({"a": 0.5, "v": 0.0}) == pytest.approx(0.5 / 1e-3)  # floored, finite
    assert imbalance_ratio({"a": 0.0, "v": 0.0}) == 1.0
