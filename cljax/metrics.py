"""Continual-learning metrics from confusion matrices and accuracy matrices.

Notation: R[i, j] is the accuracy on the test classes of batch B_j measured
after training on B_i (0-based, T batches); ``accuracy_matrix`` builds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_set_accuracy(cm: np.ndarray, classes: Sequence[int]) -> float:
    """Accuracy on the test examples whose true class is in ``classes`` (0 if there are none)."""
    classes = list(classes)
    total = cm[classes].sum()
    return float(cm[classes, classes].sum() / total) if total else 0.0


def accuracy_matrix(cms: Sequence[np.ndarray], batch_classes: Sequence[Sequence[int]]) -> np.ndarray:
    """R[i, j]: accuracy on B_j's classes from the confusion matrix taken after B_i."""
    return np.array([[class_set_accuracy(cm, c) for c in batch_classes] for cm in cms])


def average_accuracy(accuracies: Sequence[float]) -> float:
    """Mean over the stream of the accuracy measured after each batch (area under Fig. 7's curves)."""
    return float(np.mean(accuracies))


def backward_transfer(r: np.ndarray) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): (1 / (T-1)) Σ_{j<T} (R[T, j] − R[j, j]).

    Negative values are forgetting. Defined as 0 for a single batch.
    """
    t = r.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)]))


def forgetting(r: np.ndarray) -> float:
    """Average forgetting (Chaudhry et al. 2018): (1 / (T-1)) Σ_{j<T} max_{l<T} (R[l, j] − R[T, j]).

    For each earlier batch j, the drop from its best accuracy before the last
    batch to its accuracy after the last batch. Defined as 0 for a single batch.
    """
    t = r.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([np.max(r[j : t - 1, j]) - r[-1, j] for j in range(t - 1)]))


def summarize(runs: Sequence[dict]) -> dict[str, float | list[float]]:
    """Across runs: mean and std of final accuracy, average accuracy, forgetting and BWT, plus each
    run's value (``<metric>_per_run``, for the runs listed in ``run_indices``)."""
    r_mats = [np.asarray(run["accuracy_matrix"]) for run in runs]
    per_run = {
        "final_accuracy": [float(run["accuracy"][-1]) for run in runs],
        "average_accuracy": [average_accuracy(run["accuracy"]) for run in runs],
        "forgetting": [forgetting(r) for r in r_mats],
        "bwt": [backward_transfer(r) for r in r_mats],
    }
    summary: dict[str, float | list[float]] = {"run_indices": [int(run.get("run", k)) for k, run in enumerate(runs)]}
    for name, values in per_run.items():
        summary[f"{name}_mean"] = float(np.mean(values))
        summary[f"{name}_std"] = float(np.std(values))
    for name, values in per_run.items():
        summary[f"{name}_per_run"] = values
    return summary
