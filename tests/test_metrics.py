"""Accuracy matrix, BWT and forgetting against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from cljax import metrics

# R[i, j]: accuracy on batch j's classes after batch i (3 batches).
R = np.array(
    [
        [0.9, 0.0, 0.0],
        [0.5, 0.8, 0.0],
        [0.3, 0.6, 0.7],
    ]
)


def test_bwt_by_hand():
    # ((0.3 - 0.9) + (0.6 - 0.8)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.4)


def test_forgetting_by_hand():
    # batch 0: max(0.9, 0.5) - 0.3 = 0.6; batch 1: max(0.8) - 0.6 = 0.2
    assert metrics.forgetting(R) == pytest.approx(0.4)
    r = R.copy()
    r[1, 0] = 0.95  # the best accuracy, not the first, is the reference
    assert metrics.forgetting(r) == pytest.approx(((0.95 - 0.3) + 0.2) / 2)


def test_single_batch_metrics_are_zero():
    assert metrics.backward_transfer(R[:1, :1]) == 0.0 and metrics.forgetting(R[:1, :1]) == 0.0


def test_accuracy_matrix_from_confusion_matrices():
    cm = np.array([[3, 1, 0, 0], [0, 4, 0, 0], [2, 0, 2, 0], [0, 0, 1, 1]])
    r = metrics.accuracy_matrix([cm], [[0, 1], [2, 3]])
    np.testing.assert_allclose(r, [[7 / 8, 3 / 6]])
    assert metrics.class_set_accuracy(cm, []) == 0.0


def test_summarize_across_runs():
    runs = [
        {"accuracy": [0.9, 0.5, 0.4], "accuracy_matrix": R.tolist()},
        {"accuracy": [0.8, 0.6, 0.6], "accuracy_matrix": R.tolist()},
    ]
    s = metrics.summarize(runs)
    assert s["final_accuracy_mean"] == pytest.approx(0.5)
    assert s["final_accuracy_std"] == pytest.approx(0.1)
    assert s["average_accuracy_mean"] == pytest.approx((0.6 + 2 / 3) / 2)
    assert s["bwt_mean"] == pytest.approx(-0.4) and s["forgetting_mean"] == pytest.approx(0.4)
