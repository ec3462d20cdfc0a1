"""Cumulative: retrain on the union of every batch seen so far (the paper's upper bound, sec. 4.2).

"The model is retrained with the patterns from the current batch and all the
previous batches": by default (``from_scratch=True``) each batch starts again
from the run's initial weights with a fresh optimizer, which is why Tables 4-5
give Cumulative one (epochs, η) pair rather than separate B_1 / B_i>1 values.
The restart is this strategy's ``before_batch``: the initial weights live in its
state. ``from_scratch=False`` keeps training the current weights on the union instead.
The union itself is a data choice (``training_data="union"``): the scenario provides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax.engine import Params, TrainState
from cljax.hparams import flag
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec

HPARAMS = {
    "from_scratch": flag(True, "retrain from the run's initial weights with a fresh optimizer at every batch"),
}
TRAINING = {"epochs_first": 10, "epochs": 10}


def init_keeping_initial_weights(params: Params) -> dict[str, Params]:
    return {"initial_params": jax.tree.map(jnp.array, params)}  # a copy, not an alias of the live params


def restart(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
    """The run's initial weights and a fresh optimizer state (the learning rate is set after)."""
    initial = state.strategy_state["initial_params"]
    return TrainState(initial, ctx.tx.init(initial), state.strategy_state), {}


def cumulative(hparams: Mapping[str, Any] | None = None) -> Strategy:
    from_scratch = True if hparams is None else bool(hparams.get("from_scratch", True))
    if not from_scratch:
        return Strategy(name="cumulative", training_data="union")
    return Strategy(name="cumulative", init=init_keeping_initial_weights, before_batch=restart, training_data="union")


SPEC = StrategySpec(cumulative, HPARAMS, TRAINING, doc="retrain on B_1 ∪ ... ∪ B_i (upper bound)")
