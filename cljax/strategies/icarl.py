"""iCaRL, Incremental Classifier and Representation Learning (Rebuffi et al. 2017), as the paper compares it (sec. 4.4).

- Representation learning: the training set of B_i is B_i together with the stored exemplars;
  the loss is sigmoid binary cross-entropy over every output (mean over classes, as the
  authors' code), with the one-hot label as target for the classes that are not old and, for
  the old classes (seen before B_i), the sigmoid outputs of the network as it was before B_i
  (distillation). Those outputs are computed once, before training, for every row of B_i and
  every exemplar.
- Memory: after B_i it holds m = ⌊memory_size / t⌋ exemplars per class (t the classes seen), so
  it fills its budget after every batch. Old classes keep their first m exemplars; the classes of
  B_i get theirs by *herding* on L2-normalised features of the trained network (iCaRL Alg. 4:
  the k-th exemplar is the example that brings the mean of the first k closest to the class mean).
- Classification: the nearest mean of exemplars (iCaRL Alg. 1): the class whose normalised mean
  of normalised exemplar features is closest to the input's normalised features.

Each epoch is a permutation of B_i's rows and the valid exemplars together (the engine's
``union_rows``), as in the authors' code and Avalanche's: |B_i ∪ memory| / |B_i| times Naive's steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax.engine import MASKED_LOGIT, TrainState, chunked_map
from cljax.hparams import positive
from cljax.strategies import memory as mem
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec
from cljax.strategies.head import head_of

HPARAMS = {
    "memory_size": positive(500, "exemplars the memory holds after every batch: memory_size / t per class"),
}
OLD_OUTPUTS = "old_outputs"  # key of the per-example [C] sigmoid outputs of the network before B_i
CHUNK = 1000  # examples per forward pass over a batch or the memory (bounded memory)
HIGHEST = jax.lax.Precision.HIGHEST


def normalise(f_NxD: jax.Array) -> jax.Array:
    return f_NxD / jnp.maximum(jnp.linalg.norm(f_NxD, axis=-1, keepdims=True), 1e-12)


def features(apply_fn, params, x: jax.Array, chunk: int = CHUNK) -> jax.Array:
    """L2-normalised penultimate features, ``chunk`` rows at a time."""
    return chunked_map(lambda xs: normalise(apply_fn(params, xs, train=False, method="features")), chunk, x)


def herding_ranks(
    f_NxD: jax.Array, labels_N: jax.Array, eligible_N: jax.Array, quota: jax.Array, num_classes: int
) -> jax.Array:
    """Herding (iCaRL Alg. 4) for every class of the rows: the rank at which each row is chosen as an
    exemplar of its class, -1 if it is not among the first ``quota``.

    Step k picks, in each class, the row p minimising ‖μ − (f(p) + Σ_{j<k} f(p_j)) / (k + 1)‖, μ the
    class mean of the ``eligible`` rows' features (ties: the lowest row).

    With g = f − μ (each row centred on its class mean) and T = Σ_{j<k} g(p_j), (k + 1)² times that
    squared distance is ‖T + g(p)‖² = ‖g(p)‖² + 2·g(p)·T + ‖T‖², and ‖T‖² is the same for every row of
    the class. So each step ranks the rows by ‖g(p)‖² + 2·g(p)·T, and g(p)·T grows by g(p)·g(p_k)
    after each pick: one matrix-vector product a step instead of forming every candidate mean
    ([N, D] elementwise work). Centring keeps T small (herding holds the running mean near μ), so
    the expansion loses no precision to cancellation.

    The classes are herded one after the other (a loop over the classes present): a step is then one
    [N, D] x [D] product, which XLA:CPU runs ~5x faster than the [N, D] x [D, C] product that serves
    every class at once (BUILD_NOTES, "iCaRL over the union, herding one class at a time")."""
    n = labels_N.shape[0]
    labels = jnp.where(eligible_N, labels_N, 0)
    member_CxN = (labels[None, :] == jnp.arange(num_classes)[:, None]) & eligible_N[None, :]
    count = jnp.sum(member_CxN, axis=1)
    mean = jnp.dot(member_CxN.astype(f_NxD.dtype), f_NxD, precision=HIGHEST) / jnp.maximum(count, 1)[:, None]
    centred_NxD = f_NxD - mean[labels]
    norm_N = jnp.sum(centred_NxD**2, axis=-1)
    present = jnp.nonzero(count > 0, size=num_classes, fill_value=0)[0]  # the classes present, first

    def herd_class(j, ranks):
        c = present[j]
        member_N = member_CxN[c]

        def step(k, carry):
            ranks, toward_chosen_N = carry  # g(p)·T
            row = jnp.argmin(jnp.where(member_N & (ranks < 0), norm_N + 2 * toward_chosen_N, jnp.inf))
            toward = jnp.dot(centred_NxD, centred_NxD[row], precision=HIGHEST)
            return ranks.at[row].set(k), toward_chosen_N + toward

        init = (ranks, jnp.zeros((n,), f_NxD.dtype))
        return jax.lax.fori_loop(0, jnp.minimum(quota, count[c]), step, init)[0]

    return jax.lax.fori_loop(0, jnp.sum(count > 0), herd_class, jnp.full((n,), -1, jnp.int32))


def class_means(f_SxD: jax.Array, memory: mem.Memory, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Normalised mean of each class's exemplar features [C, D], and which classes have exemplars [C]."""
    sums = jax.ops.segment_sum(f_SxD * memory.valid[:, None], memory.y, num_classes)
    return normalise(sums), mem.counts(memory, memory.y, num_classes) > 0


def nearest_mean_scores(f_NxD: jax.Array, means_CxD: jax.Array, has_mean_C: jax.Array) -> jax.Array:
    """−‖f − μ_c‖² per class (higher is nearer); classes without exemplars are never chosen."""
    squared = (
        jnp.sum(f_NxD**2, axis=-1, keepdims=True)
        - 2 * jnp.dot(f_NxD, means_CxD.T, precision=HIGHEST)
        + jnp.sum(means_CxD**2, axis=-1)
    )
    return jnp.where(has_mean_C, -squared, MASKED_LOGIT)


def icarl_loss(
    logits_BxC: jax.Array, batch: Data, strategy_state: dict[str, Any], logit_mask: jax.Array | None = None
) -> jax.Array:
    """Per example: mean over classes of the sigmoid binary cross-entropy, targets one-hot except for
    the old classes, whose targets are the old network's sigmoid outputs (distillation). Classes
    outside the training head have logits -1e9 and targets 0: they add nothing to the sum."""
    del logit_mask
    onehot = jax.nn.one_hot(batch["y"], logits_BxC.shape[-1], dtype=logits_BxC.dtype)
    targets = jnp.where(strategy_state["old_classes"], batch[OLD_OUTPUTS], onehot)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_BxC, targets), axis=-1)


def exemplar_rows(state: TrainState) -> tuple[Data, jax.Array]:
    """The exemplars as training rows (with their distillation targets), for epochs over B_i ∪ memory."""
    s = state.strategy_state
    memory = s["memory"]
    rows = {"x": memory.x, "y": memory.y, "mask_index": memory.batch, OLD_OUTPUTS: s[OLD_OUTPUTS]}
    return rows, memory.valid


def distillation_targets(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
    """Before B_i: the network's sigmoid outputs on B_i and on the exemplars, and the old classes."""
    s = state.strategy_state
    memory = s["memory"]

    def outputs(x):
        sigmoid = lambda xs: jax.nn.sigmoid(ctx.apply_fn(state.params, xs, train=False)).astype(jnp.float32)
        # B_1 has no old class, so no target reads these outputs: zeros, and the forward pass is skipped
        # (``index`` is one value for every member, not vmapped, so the cond really skips it).
        zeros = lambda: jnp.zeros((x.shape[0], ctx.classes.shape[-1]), jnp.float32)
        return jax.lax.cond(ctx.index == 0, zeros, lambda: chunked_map(sigmoid, CHUNK, x))

    new = {**s, OLD_OUTPUTS: outputs(memory.x), "old_classes": ctx.seen_classes & ~ctx.classes}
    return state._replace(strategy_state=new), {OLD_OUTPUTS: outputs(ctx.data["x"])}


def update_exemplars(state: TrainState, ctx: BatchContext) -> TrainState:
    """After B_i: m = ⌊memory_size / t⌋ per class; old classes keep their first m exemplars, B_i's
    classes get m by herding; then the class means of the nearest-mean classifier."""
    s = state.strategy_state
    num_classes = ctx.classes.shape[0]
    memory = s["memory"]
    quota = jnp.floor(ctx.hparams["memory_size"] / jnp.maximum(jnp.sum(ctx.seen_classes), 1)).astype(jnp.int32)
    memory = mem.keep_first(memory, quota)
    memory = memory._replace(valid=memory.valid & ~ctx.classes[memory.y])  # B_i's classes are herded anew
    x, y = ctx.data["x"], ctx.data["y"]
    eligible = (jnp.arange(y.shape[0]) < ctx.num_examples) & ctx.classes[y]
    ranks = herding_ranks(features(ctx.apply_fn, state.params, x), y, eligible, quota, num_classes)
    memory = mem.insert(memory, ctx.data, ranks, ranks >= 0, ctx.index)
    means, has_mean = class_means(features(ctx.apply_fn, state.params, memory.x), memory, num_classes)
    return state._replace(strategy_state={**s, "memory": memory, "class_means": means, "has_mean": has_mean})


def nearest_mean_logits(state: TrainState, x: jax.Array, apply_fn) -> jax.Array:
    s = state.strategy_state
    f = normalise(apply_fn(state.params, x, train=False, method="features"))
    return nearest_mean_scores(f, s["class_means"], s["has_mean"])


def icarl(hparams: Mapping[str, Any] | None = None) -> Strategy:
    stream = mem.stream_shape(hparams, "icarl")
    slots = mem.memory_slots(stream.largest["memory_size"])
    num_classes = stream.num_classes

    def init(params):
        width = head_of(params)["kernel"].shape[0]  # D, the penultimate features
        return {
            "memory": mem.empty_memory(slots, stream),
            OLD_OUTPUTS: jnp.zeros((slots, num_classes), jnp.float32),
            "old_classes": jnp.zeros((num_classes,), bool),
            "class_means": jnp.zeros((num_classes, width), jnp.float32),
            "has_mean": jnp.zeros((num_classes,), bool),
        }

    return Strategy(
        name="icarl",
        init=init,
        before_batch=distillation_targets,
        after_batch=update_exemplars,
        loss=icarl_loss,
        logits=nearest_mean_logits,
        union_rows=exemplar_rows,
    )


SPEC = StrategySpec(icarl, HPARAMS, doc="iCaRL: herding exemplars, distillation, nearest mean of exemplars (sec. 4.4)")
