"""The strategy contract: a small record of pure functions around the engine.

A continual-learning strategy is fully described by

- ``transform(base_tx)``: the optax transformation it trains with (EWC/SI add a
  quadratic anchor penalty, SI a path tracker, CWR freezes the shared weights Θ̄
  with ``transforms.freeze_body``);
- ``init(params)``: its own state (consolidated head, importances, ...);
- ``before_batch(state, ctx) -> (state, extras)`` / ``after_batch(state, ctx) -> state``:
  pure updates of the ``TrainState`` around the training of batch B_i (reset the head,
  restart from the initial weights, consolidate). ``extras`` is a dict of per-example
  arrays the loss reads besides ``x`` and ``y`` (LwF's soft targets), the same keys and
  shapes every batch; ``{}`` for most strategies;
- ``loss(logits, minibatch, strategy_state, logit_mask)``: per-example task loss. ``logits`` are
  masked already (-1e9 outside the training head); ``logit_mask`` (bool, [C], or [B, C] in the
  multi-task setting) names the head's classes, so a loss that spreads mass over classes (label
  smoothing, distillation) can keep it on the head (``optax.smooth_labels`` over all C classes
  would put mass on -1e9 logits: a loss near 1e8);
- ``eval_params(state)``: the parameters evaluation uses (CWR: Θ̄ with cw) and whose change
  per batch the diagnostics report;
- ``logits(state, x, apply_fn)`` (optional): the scores evaluation classifies with; None is
  ``apply_fn(eval_params(state), x, train=False)`` (iCaRL: the nearest mean of exemplars);
- ``gradients(state, minibatch, weights, key, loss_and_grad)`` (optional): the gradient of a
  training step; None is ``loss_and_grad(state.params, minibatch, weights)`` (rehearsal: replay
  a memory with the mini-batch, or project the gradient as GEM does);
- ``union_rows(state)`` (optional): ``(rows, valid)``, stored rows ([S, ...], with the
  mini-batch's keys) that every epoch trains on together with B_i's rows, only the ``valid``
  ones (iCaRL: B_i together with the exemplars); each member then draws its own permutations;
- ``importance(state)`` (optional, EWC/SI/AR1): ``{"F": raw importance, "F_hat":
  clipped importance}`` for diagnostics (paper Fig. 4-5);
- ``default_head`` (App. A) and ``training_data``: ``"batch"`` trains on B_i,
  ``"union"`` on B_1 ∪ ... ∪ B_i (Cumulative; the scenario provides the union);
- ``multi_head_fit`` (MT setting only): ``"task"`` masks each example's logits to its own
  task's head; ``"seen"`` leaves every class seen so far to the loss, which splits them
  itself (LwF in MT, sec. 2.1: L_cross on the new classes, distillation on the old ones).

Every hook is jittable and vmappable: ``BatchContext`` holds arrays only (plus the
static model function and optimizer), hyperparameters that a grid may vary arrive as
arrays in ``ctx.hparams``, and every hook keeps the shapes and dtypes of every leaf, so
one compiled program serves every batch, run and grid point of a stream.

A strategy is registered with ``StrategySpec``: its factory and its hyperparameters
(``cljax.hparams``), declared once, beside the factory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax import struct

from cljax.engine import GradientsFn, LossFn, Params, TrainState, UnionRowsFn, cross_entropy
from cljax.hparams import HParam

Data = dict[str, jax.Array]


@struct.dataclass
class BatchContext:
    """What a hook knows about the batch B_i being trained: arrays only (index is 0-based)."""

    index: jax.Array  # int32 []: i − 1 for batch B_i
    classes: jax.Array  # bool [C]: classes present in B_i
    seen_classes: jax.Array  # bool [C]: classes of B_1..B_i
    class_counts: jax.Array  # float32 [C]: training examples of each class in ``data`` (real rows)
    batch_sizes: jax.Array  # int32 [T]: n_j of B_1..B_i, 0 for the batches still to come (LwF eq. 5)
    num_examples: jax.Array  # int32 []: real rows of ``data``
    data: Data  # training arrays, padded to a fixed capacity: x, y (MT: mask_index)
    logit_mask: jax.Array  # bool [C]: the training head (maximal, expanding, or B_i's task head)
    hparams: dict[str, jax.Array]  # the traced hyperparameters of this run (one grid point)
    key: jax.Array
    apply_fn: Callable[..., jax.Array] = struct.field(pytree_node=False)  # apply_fn(params, x, train=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)  # the strategy's full transformation


def no_extras(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
    del ctx
    return state, {}


def keep_state(state: TrainState, ctx: BatchContext) -> TrainState:
    del ctx
    return state


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    transform: Callable[[optax.GradientTransformation], optax.GradientTransformation] = lambda tx: tx
    init: Callable[[Params], Any] = lambda params: ()
    before_batch: Callable[[TrainState, BatchContext], tuple[TrainState, Data]] = no_extras
    after_batch: Callable[[TrainState, BatchContext], TrainState] = keep_state
    loss: LossFn = cross_entropy
    eval_params: Callable[[TrainState], Params] = lambda state: state.params
    logits: Callable[[TrainState, jax.Array, Callable[..., jax.Array]], jax.Array] | None = None
    gradients: GradientsFn | None = None
    union_rows: UnionRowsFn | None = None
    importance: Callable[[TrainState], dict[str, Any]] | None = None
    default_head: str = "maximal"  # App. A: maximal for all but LwF (expanding)
    training_data: str = "batch"  # batch: B_i | union: B_1 ∪ ... ∪ B_i (Cumulative)
    multi_head_fit: str = "task"  # MT: task: each example's own task head | seen: every seen class (LwF)
    # False: the ``gradients`` hook feeds the model other rows than the mini-batch's labels (AR1*'s
    # latent replay), so a mesh's data axis, which splits a mini-batch's rows, cannot be used.
    data_parallel: bool = True


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: ``factory(static_hparams) -> Strategy`` and its hyperparameters.

    ``hparams`` declares the strategy's own fields; ``training`` overrides the top-level
    training defaults (epochs, learning rates, ...) for this strategy (Tables 4-5 give each
    strategy its own).
    """

    factory: Callable[[Mapping[str, Any]], Strategy]
    hparams: Mapping[str, HParam] = dataclasses.field(default_factory=dict)
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    doc: str = ""
    # Called with each grid point's merged values (hyperparameters and training fields) before
    # any training, e.g. to warn about an unstable penalty; raises ConfigError for bad input.
    check: Callable[[Mapping[str, Any]], None] | None = None

    def static_hparams(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: values[k] for k, spec in self.hparams.items() if not spec.traced}

    def traced_names(self) -> tuple[str, ...]:
        return tuple(k for k, spec in self.hparams.items() if spec.traced)
