"""Training and evaluation: one jit-compiled call per incremental batch.

The engine knows nothing of strategies beyond their contract (see
``cljax.strategies.base``): a per-example loss, an optax transformation, and
the parameters to evaluate with. Shapes are fixed per scenario — training data
is padded to a capacity shared by every batch of every run, and the number of
examples, epochs and the logit mask are traced values — so the stream compiles
``fit`` once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
LossFn = Callable[[jax.Array, dict[str, jax.Array], Any], jax.Array]

# A fit calls its ``progress`` callback about this many times (plus once at the end).
PROGRESS_UPDATES = 4

# Masked logits get this value: exp() underflows to exactly 0 in float32, and,
# unlike -inf, 0 * MASKED_LOGIT stays finite in soft-target cross-entropies.
MASKED_LOGIT = -1e9


class TrainState(NamedTuple):
    """Everything a run carries from batch to batch (all pytrees of arrays)."""

    params: Params
    opt_state: optax.OptState
    strategy_state: Any


class FitMetrics(NamedTuple):
    loss: jax.Array  # mean task loss over the last epoch's steps
    steps: jax.Array  # optimizer steps taken
    nonfinite_step: jax.Array  # first step whose loss or gradient was not finite; -1 if none


def mask_logits(logits_BxC: jax.Array, mask_C: jax.Array) -> jax.Array:
    """Expanding/multi-head: classes outside ``mask`` (bool, broadcastable) get no probability."""
    return jnp.where(mask_C, logits_BxC, MASKED_LOGIT)


def split_outputs(outputs: Any) -> tuple[jax.Array, tuple[tuple[float, jax.Array], ...]]:
    """A model's training output as (logits, ((weight, aux_logits), ...)).

    Models with auxiliary classifiers (GoogLeNet) return that pair when called
    with ``train=True``; every other model returns the logits alone (no
    auxiliary outputs). Evaluation calls (``train=False``) always return logits.
    """
    if isinstance(outputs, tuple):
        logits, aux = outputs
        return logits, tuple(aux)
    return outputs, ()


def cross_entropy(logits_BxC: jax.Array, batch: dict[str, jax.Array], strategy_state: Any) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (the default task loss)."""
    del strategy_state
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["y"])


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every floating-point leaf of ``tree`` is finite (the divergence guard's test)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_optimizer(name: str, momentum: float = 0.0) -> optax.GradientTransformation:
    """Base optimizer with the learning rate in its state (``set_learning_rate``): B_1 and
    B_i>1 use different rates (Tables 4-5) without recompiling."""
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=momentum)
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
    raise ValueError(f"optimizer={name!r} is unknown; allowed: adam, sgd")


def set_learning_rate(opt_state: optax.OptState, learning_rate: float) -> optax.OptState:
    """Writes the learning rate into every injected-hyperparameter state, keeping its dtype."""
    old = optax.tree.get(opt_state, "learning_rate")
    return optax.tree.set(opt_state, learning_rate=jnp.asarray(learning_rate, old.dtype))


def pad_to(x: np.ndarray, capacity: int) -> np.ndarray:
    """Zero-pads the leading axis to ``capacity`` (fixed shapes: nothing recompiles)."""
    if len(x) > capacity:
        raise ValueError(f"{len(x)} examples exceed the padded capacity {capacity}")
    pad = np.zeros((capacity - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad])


def make_fit(
    apply_fn: Callable[..., jax.Array],
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    batch_size: int,
    progress: Callable[[jax.Array, jax.Array], None] | None = None,
    loop: str = "device",
) -> Callable[..., tuple[TrainState, FitMetrics]]:
    """Builds ``fit(state, data, num_examples, epochs, logit_mask, key)``, jit-compiled.

    ``apply_fn(params, x, train=True, rngs=...)`` returns logits, or
    ``(logits, ((weight, aux_logits), ...))`` for a model with auxiliary
    classifiers: the loss is then ``loss_fn`` on the logits plus ``weight``
    times ``loss_fn`` on each auxiliary output (``split_outputs``).
    ``data`` is a dict of arrays sharing a padded leading axis (``x``, ``y`` and
    whatever per-example arrays the strategy's loss reads, e.g. LwF soft
    targets); only the first ``num_examples`` rows are real. ``logit_mask`` is
    the training head: [C] bool for every example, or a [K, C] table of heads
    (multi-task) with ``data["mask_index"]`` giving each example's row. Each epoch draws a
    permutation of the real rows from ``key``; the last mini-batch of an epoch
    may be partial, its missing rows weighted zero. A step whose loss or
    gradient is not finite is not applied and ends the fit (divergence guard).

    The epoch and step loops are ``lax.while_loop``s (``fori_loop`` with traced
    bounds): a ``lax.scan`` needs a static length, which would make every batch
    run as many steps as the largest one (Cumulative's last batch).
    ``loop="host"`` runs the same steps from a Python loop, one jitted call per
    mini-batch: XLA:CPU runs convolutions inside a while loop 10-30x slower
    (jax-ml/jax#12868), so convolutional models on CPU train faster that way.

    ``progress(steps_done, total_steps)`` (None = off) is called from inside the
    compiled loop through ``jax.debug.callback``, every ceil(total / PROGRESS_UPDATES)
    steps and after the last one: a progress display with no per-step host round
    trip, the same compiled program for every batch, and no effect on the results.
    """
    tx = optax.with_extra_args_support(tx)

    def report_progress(done: jax.Array, total: jax.Array) -> None:
        if progress is None:
            return
        interval = jnp.maximum((total + PROGRESS_UPDATES - 1) // PROGRESS_UPDATES, 1)
        jax.lax.cond(
            (done % interval == 0) | (done == total),
            lambda: jax.debug.callback(progress, done, total),
            lambda: None,
        )

    def train_step(state: TrainState, mini: dict[str, jax.Array], weights_B, logit_mask, key):
        def objective(params):
            outputs = apply_fn(params, mini["x"], train=True, rngs={"dropout": key})
            logits, aux = split_outputs(outputs)
            # A [K, C] mask is a table of heads, one row per example via data["mask_index"] (MT).
            mask = logit_mask[mini["mask_index"]] if logit_mask.ndim == 2 else logit_mask
            per_example = loss_fn(mask_logits(logits, mask), mini, state.strategy_state)
            # Auxiliary classifiers (GoogLeNet loss1/loss2): the same per-example loss, weighted.
            for weight, aux_logits in aux:
                per_example = per_example + weight * loss_fn(mask_logits(aux_logits, mask), mini, state.strategy_state)
            return jnp.sum(per_example * weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)

        loss, grads = jax.value_and_grad(objective)(state.params)
        # ``task_grads``: the raw task-loss gradient, for transformations that need it
        # next to the applied update (the SI path tracker); others ignore it.
        updates, opt_state = tx.update(grads, state.opt_state, state.params, task_grads=grads)
        new_state = TrainState(optax.apply_updates(state.params, updates), opt_state, state.strategy_state)
        finite = jnp.isfinite(loss) & tree_all_finite(grads)
        # On divergence keep the last good state (the caller reports the step).
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        return new_state, loss, finite

    def epoch_order(key, epoch, num_examples, capacity: int):
        """A permutation of the real rows (padding rows last, then ``batch_size`` spare
        zeros so every slice is full) and the epoch's key for dropout."""
        shuffle_key, epoch_key = jax.random.split(jax.random.fold_in(key, epoch))
        noise = jax.random.uniform(shuffle_key, (capacity,))
        order = jnp.argsort(jnp.where(jnp.arange(capacity) < num_examples, noise, 2.0))
        return jnp.concatenate([order, jnp.zeros((batch_size,), order.dtype)]), epoch_key

    def minibatch_step(state, data, order, s, num_examples, logit_mask, epoch_key):
        """Mini-batch ``s`` of an epoch; its missing rows (partial last batch) weigh zero."""
        start = s * batch_size
        idx = jax.lax.dynamic_slice(order, (start,), (batch_size,))
        weights = (start + jnp.arange(batch_size) < num_examples).astype(jnp.float32)
        mini = jax.tree.map(lambda a: a[idx], data)
        return train_step(state, mini, weights, logit_mask, jax.random.fold_in(epoch_key, s))

    @jax.jit
    def fit(state: TrainState, data: dict[str, jax.Array], num_examples, epochs, logit_mask, key):
        capacity = data["y"].shape[0]
        num_examples = jnp.asarray(num_examples, jnp.int32)
        steps_per_epoch = (num_examples + batch_size - 1) // batch_size

        def run_epoch(carry):
            epoch, state, _, steps, bad = carry
            order, epoch_key = epoch_order(key, epoch, num_examples, capacity)

            def run_step(inner):
                s, state, loss_sum, steps, bad = inner
                state, loss, finite = minibatch_step(state, data, order, s, num_examples, logit_mask, epoch_key)
                report_progress(epoch * steps_per_epoch + s + 1, epochs * steps_per_epoch)
                bad = jnp.where((bad < 0) & ~finite, steps, bad)
                return s + 1, state, loss_sum + jnp.where(finite, loss, 0.0), steps + finite, bad

            _, state, loss_sum, steps, bad = jax.lax.while_loop(
                lambda inner: (inner[0] < steps_per_epoch) & (inner[4] < 0),
                run_step,
                (jnp.int32(0), state, jnp.float32(0.0), steps, bad),
            )
            return epoch + 1, state, loss_sum / jnp.maximum(steps_per_epoch, 1), steps, bad

        _, state, last_loss, steps, bad = jax.lax.while_loop(
            lambda c: (c[0] < epochs) & (c[4] < 0),
            run_epoch,
            (jnp.int32(0), state, jnp.float32(0.0), jnp.int32(0), jnp.int32(-1)),
        )
        return state, FitMetrics(last_loss, steps, bad)

    if loop == "device":
        return fit
    if loop != "host":
        raise ValueError(f"loop={loop!r} is unknown; allowed: device, host")

    jit_order = jax.jit(epoch_order, static_argnames="capacity")

    @jax.jit
    def host_step(state, data, order, s, num_examples, logit_mask, epoch_key, ok):
        # After a non-finite step the remaining steps of the epoch are no-ops (``ok`` false),
        # so the host checks the flag once per epoch instead of syncing every step.
        new_state, loss, finite = minibatch_step(state, data, order, s, num_examples, logit_mask, epoch_key)
        state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
        return state, jnp.where(ok & finite, loss, 0.0), ok & finite

    def fit_host_loop(state: TrainState, data, num_examples, epochs, logit_mask, key):
        """The same training as ``fit`` with the step loop on the host: one jitted call per
        mini-batch (XLA:CPU runs convolutions inside a while loop many times slower)."""
        num_examples, epochs = int(num_examples), int(epochs)
        steps_per_epoch = -(-num_examples // batch_size)
        total = epochs * steps_per_epoch
        steps, bad, last_loss = 0, -1, jnp.float32(0.0)
        for epoch in range(epochs):
            order, epoch_key = jit_order(key, epoch, num_examples, data["y"].shape[0])
            ok, loss_sum, finite_steps = jnp.bool_(True), jnp.float32(0.0), jnp.int32(0)
            for s in range(steps_per_epoch):
                state, loss, ok = host_step(state, data, order, s, num_examples, logit_mask, epoch_key, ok)
                loss_sum, finite_steps = loss_sum + loss, finite_steps + ok
                done = epoch * steps_per_epoch + s + 1
                interval = max(-(-total // PROGRESS_UPDATES), 1)
                if progress is not None and (done % interval == 0 or done == total):
                    progress(done, total)
            steps += int(finite_steps)
            last_loss = loss_sum / max(steps_per_epoch, 1)
            if not bool(ok):
                bad = steps
                break
        return state, FitMetrics(jnp.asarray(last_loss, jnp.float32), jnp.int32(steps), jnp.int32(bad))

    fit_host_loop._cache_size = host_step._cache_size  # compile counting, as for ``fit``
    return fit_host_loop


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk"))
def predict(apply_fn, params: Params, x: jax.Array, mask_table_KxC, mask_index, chunk: int = 1000):
    """Arg-max predictions, ``chunk`` examples at a time (bounded memory).

    Example n is classified among the classes ``mask_table[mask_index[n]]``:
    one all-true row is the maximal head, the seen classes the expanding head,
    one row per task with the true task's index the multi-head task oracle.
    """
    n = x.shape[0]
    padded = -(-n // chunk) * chunk
    x = jnp.concatenate([x, jnp.zeros((padded - n,) + x.shape[1:], x.dtype)])
    mask_index = jnp.concatenate([mask_index, jnp.zeros((padded - n,), mask_index.dtype)])

    def one_chunk(args):
        x_chunk, idx_chunk = args
        logits = apply_fn(params, x_chunk, train=False)
        return jnp.argmax(mask_logits(logits, mask_table_KxC[idx_chunk]), axis=-1)

    preds = jax.lax.map(one_chunk, (x.reshape((-1, chunk) + x.shape[1:]), mask_index.reshape(-1, chunk)))
    return preds.reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk"))
def features(apply_fn, params: Params, x: jax.Array, chunk: int = 1000) -> jax.Array:
    """Penultimate activations ``apply_fn(params, x, method="features")`` in inference mode,
    ``chunk`` examples at a time: the inputs of a head-only fit (``Strategy.trains_body``)."""
    n = x.shape[0]
    padded = -(-n // chunk) * chunk
    x = jnp.concatenate([x, jnp.zeros((padded - n,) + x.shape[1:], x.dtype)])
    feats = jax.lax.map(
        lambda x_chunk: apply_fn(params, x_chunk, train=False, method="features"),
        x.reshape((-1, chunk) + x.shape[1:]),
    )
    return feats.reshape((padded,) + feats.shape[2:])[:n]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts (int64)."""
    chex.assert_equal_shape([labels, preds])
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(preds, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
