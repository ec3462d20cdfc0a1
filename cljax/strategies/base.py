"""The strategy contract: a small record of pure functions around the engine.

A continual-learning strategy is fully described by

- ``transform(base_tx)``: the optax transformation it trains with (EWC/SI add a
  quadratic anchor penalty, SI a path tracker, CWR freezes the shared weights);
- ``init(params)``: its own state (consolidated head, importances, ...);
- ``before_batch(state, ctx)`` / ``after_batch(state, ctx)``: pure updates of the
  ``TrainState`` around the training of batch B_i (reset the head, compute soft
  targets, consolidate); ``before_batch`` may also add per-example arrays to the
  training data (LwF's soft targets), with the same keys and shapes every batch;
- ``loss(logits, minibatch, strategy_state)``: per-example task loss;
- ``eval_params(state)``: the parameters evaluation uses (CWR: Θ̄ with cw);
- ``importance(state)`` (optional, EWC/SI/AR1): ``{"F": raw importance, "F_hat":
  clipped importance, "max_f": clip value}`` for diagnostics (paper Fig. 4-5);
- ``trains_body(i)`` (static, default always True): False when batch B_i trains the head
  alone with the shared weights Θ̄ frozen (CWR, CWR+ after B_1); the Trainer then computes the
  penultimate features once and fits only the head, so Θ̄ stays bitwise unchanged and no
  gradient is computed for it.

Every hook keeps the shapes and dtypes of every leaf, so the compiled training
step is reused by every batch of the stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from cljax.engine import LossFn, Params, TrainState, cross_entropy

Data = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class BatchContext:
    """What a hook may know about the batch B_i being trained (index is 0-based)."""

    index: int
    classes: tuple[int, ...]  # classes of this batch
    seen_classes: tuple[int, ...]  # classes of B_1..B_i, this batch included
    num_classes: int
    data: Data  # training arrays, padded: x, y (+ strategy arrays)
    num_examples: int  # real rows of ``data``
    batch_sizes: tuple[int, ...]  # examples n_j of B_1..B_i (LwF eq. 5)
    apply_fn: Callable[..., jax.Array]  # apply_fn(params, x, train=False) -> logits
    logit_mask: jax.Array  # [num_classes] bool, the training head
    key: jax.Array


def _keep_state(state: TrainState, ctx: BatchContext) -> TrainState:
    del ctx
    return state


def _keep_data(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
    return state, ctx.data


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    transform: Callable[[optax.GradientTransformation], optax.GradientTransformation] = lambda tx: tx
    init: Callable[[Params], Any] = lambda params: ()
    before_batch: Callable[[TrainState, BatchContext], tuple[TrainState, Data]] = _keep_data
    after_batch: Callable[[TrainState, BatchContext], TrainState] = _keep_state
    loss: LossFn = cross_entropy
    eval_params: Callable[[TrainState], Params] = lambda state: state.params
    importance: Callable[[TrainState], dict[str, Any]] | None = None
    default_head: str = "maximal"  # App. A: maximal for all but LwF (expanding)
    cumulative_data: bool = False  # train on B_1 ∪ ... ∪ B_i instead of B_i
    restart_each_batch: bool = False  # start every batch from the run's initial weights and a fresh optimizer
    trains_body: Callable[[int], bool] = lambda index: True  # False: B_index trains the head only
