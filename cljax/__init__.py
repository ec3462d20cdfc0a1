"""cljax: continual learning in single-incremental-task scenarios in JAX (Maltoni & Lomonaco 2019).

The public names below are listed, each with its one-line contract, in ``docs/api.md``. They are
imported on first use (PEP 562), so ``import cljax`` is cheap: it imports neither JAX nor any data.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

# public name -> the module that defines it
_SOURCES: dict[str, str] = {
    # Optax transformations and their state helpers (plain optax code can use them).
    **dict.fromkeys(
        [
            "quadratic_anchor_penalty",
            "anchor_penalty_in_state",
            "si_path_tracker",
            "freeze_body",
            "exclude_mask",
            "QuadraticAnchorState",
            "AnchorPenaltyState",
            "SIPathState",
            "FrozenBodyState",
            "anchor_state",
            "replace_anchor_state",
            "si_path_state",
            "reset_si_path",
            "si_batch_importance",
            "set_hyperparams",
            "frozen_body",
            "set_frozen",
            "map_unmasked",
            "unmask",
        ],
        "cljax.transforms",
    ),
    # Pure consolidation functions of the consolidated head (CWR, CWR+, AR1).
    **dict.fromkeys(
        [
            "HeadState",
            "init_head_state",
            "consolidate",
            "consolidate_mean_shift",
            "mean_shift",
            "zero_head",
            "reset_head",
            "head_of",
            "with_head",
            "eval_with_cw",
            "freeze_head_bias",
        ],
        "cljax.strategies.head",
    ),
    # The strategy contract and the registries.
    **dict.fromkeys(["Strategy", "StrategySpec", "BatchContext"], "cljax.strategies.base"),
    **dict.fromkeys(["STRATEGIES", "make_strategy", "strategy_spec", "default_hparams"], "cljax.strategies"),
    **dict.fromkeys(["register_strategy", "register_dataset", "register_model"], "cljax.registry"),
    **dict.fromkeys(
        ["ConfigError", "positive", "non_negative", "positive_int", "choice", "flag", "interval"], "cljax.hparams"
    ),
    **dict.fromkeys(["MODELS", "Classifier", "check_model", "ModelContractError"], "cljax.models"),
    # Datasets and scenarios.
    **dict.fromkeys(
        [
            "DATASETS",
            "Dataset",
            "DataError",
            "Scenario",
            "IncrementalBatch",
            "load_dataset",
            "build_scenario",
            "nc_scenario",
            "dataset_from_arrays",
            "nc_from_arrays",
            "ni_from_arrays",
            "scenario_dataset",
        ],
        "cljax.scenarios",
    ),
    # Training and evaluation.
    **dict.fromkeys(["base_config", "validate"], "cljax.config"),
    **dict.fromkeys(
        ["TrainState", "make_fit", "make_optimizer", "cross_entropy", "evaluate", "predict", "confusion_matrix"],
        "cljax.engine",
    ),
    **dict.fromkeys(["StrategyJob", "run_members", "run_experiment"], "cljax.experiment"),
    "train": "cljax.api",
    # Per-batch events (console, CSV, TensorBoard, yours).
    **dict.fromkeys(
        ["Callback", "FunctionCallback", "CallbackList", "ConsoleLogger", "CSVLogger", "TensorBoardLogger"],
        "cljax.callbacks",
    ),
    # Metrics.
    **dict.fromkeys(
        [
            "class_set_accuracy",
            "accuracy_matrix",
            "average_accuracy",
            "backward_transfer",
            "forgetting",
            "summarize",
        ],
        "cljax.metrics",
    ),
}

__all__ = ["__version__", *_SOURCES]


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'cljax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
