"""LwF, Learning without Forgetting, as the paper adapts it to SIT (sec. 2.1).

Before training on B_i one forward pass over its patterns stores the network's
predictions ŷ_lwf (soft targets); training then minimises the cross-entropy
against the weighted soft target (1 − λ_i)·onehot + λ_i·ŷ_lwf (eq. 3), which
has the same gradient as the two-term loss of eq. 2 (eq. 4). λ_1 = 0 and
λ_i = map(1 − n_i / Σ_{j≤i} n_j) (eq. 5), ``map`` the linear map of the interval
``map_from`` onto ``map_to`` (Table 4: [0.66, 0.9] -> [0.45, 0.85]). The head is
expanding by default (App. A).

Choices: the soft targets are the softmax over the training head (the classes
seen so far, the current batch's included: eq. 3's targets and the loss live on
the same "s classes encountered so far", sec. 2.1); λ_i is clipped to [0, 1]
so the target stays a distribution when the map is extrapolated outside
``map_from``. λ_i lives in the strategy state as a float32 scalar and the map's
intervals arrive as traced hyperparameters, so neither recompiles the training step.

MT setting (sec. 2.1: "L_cross is computed only for the n_i new classes in B_i, while L_kdl is
computed for all the classes previously learned"): the fit leaves every class seen so far to the
loss (``Strategy.multi_head_fit='seen'``), the soft targets ŷ_lwf are the softmax over the
previously learned classes only, and the loss is eq. 2's two terms with their own softmaxes,
(1 − λ_i)·L_cross(new classes, one-hot) + λ_i·L_cross(old classes, ŷ_lwf) (the distillation
term as cross-entropy, as the paper does for SIT; the old tasks' heads in one compact term,
which sec. 2.1 states is equivalent). The two terms do not share a softmax, so eq. 3's fused
target does not apply. The stream is MT when its training data carries ``mask_index``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax.engine import TrainState, chunked_map, mask_logits
from cljax.hparams import interval
from cljax.models import HEAD
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec

SOFT_TARGETS = "soft_targets"  # key of the per-example [capacity, C] soft targets in the training data
SOFT_TARGET_CHUNK = 1000  # examples per forward pass when computing soft targets (bounded memory)
MT_KEY = "mask_index"  # present in the training data of MT streams only (each example's task head)


HPARAMS = {
    # 1 − n_i/Σn_j of 5 equal batches runs 1/2 ... 4/5 (Table 4, CORe50: 0.66 ... 0.9) ...
    "map_from": interval((0.5, 0.8), "interval of 1 − n_i/Σ_{j≤i} n_j mapped linearly (eq. 5)"),
    # ... mapped linearly onto this interval of λ_i (Table 4: 0.45 ... 0.85).
    "map_to": interval((0.6, 0.9), "interval of λ_i it is mapped onto (eq. 5)"),
}


def linear_map(x, map_from, map_to):
    """The linear map taking ``map_from[0]`` to ``map_to[0]`` and ``map_from[1]`` to ``map_to[1]`` (eq. 5's map)."""
    (a, b), (c, d) = map_from, map_to
    return c + (x - a) * (d - c) / (b - a)


def lwf_lambda(batch_sizes_T: jax.Array, index: jax.Array, map_from, map_to) -> jax.Array:
    """λ_i of eq. 5 for batch ``index`` (0-based) given n_1..n_T (``batch_sizes``, zeros after
    ``index``); λ_1 = 0, and λ_i is clipped to [0, 1]."""
    sizes = jnp.asarray(batch_sizes_T, jnp.float32)
    seen = jnp.sum(jnp.where(jnp.arange(sizes.shape[0]) <= index, sizes, 0.0))  # Σ_{j≤i} n_j
    x = 1.0 - sizes[index] / jnp.maximum(seen, 1.0)
    lam = jnp.clip(linear_map(x, map_from, map_to), 0.0, 1.0)
    return jnp.where(index == 0, 0.0, lam).astype(jnp.float32)


def lwf_loss(
    logits_BxC: jax.Array, batch: Data, strategy_state: dict[str, jax.Array], logit_mask: jax.Array | None = None
) -> jax.Array:
    """Per-example eq. 3: CE(ŷ, (1 − λ)·onehot(y) + λ·ŷ_lwf); MT (sec. 2.1): eq. 2 with
    L_cross over the batch's new classes and the distillation term over the old classes. Both
    targets are zero outside the training head already (ŷ_lwf is a softmax over it), so
    ``logit_mask`` is not needed."""
    del logit_mask
    lam = strategy_state["lambda"]
    if MT_KEY in batch:
        new = mask_logits(logits_BxC, strategy_state["new_classes"])
        old = mask_logits(logits_BxC, strategy_state["old_classes"])
        cross = optax.softmax_cross_entropy_with_integer_labels(new, batch["y"])
        return (1.0 - lam) * cross + lam * optax.softmax_cross_entropy(old, batch[SOFT_TARGETS])
    onehot = jax.nn.one_hot(batch["y"], logits_BxC.shape[-1], dtype=logits_BxC.dtype)
    targets = (1.0 - lam) * onehot + lam * batch[SOFT_TARGETS]
    return optax.softmax_cross_entropy(logits_BxC, targets)


def soft_targets(apply_fn, params, x: jax.Array, logit_mask_C: jax.Array, chunk: int = SOFT_TARGET_CHUNK) -> jax.Array:
    """ŷ_lwf = softmax over the training head of the current network, for every row of ``x``."""
    return chunked_map(
        lambda x_chunk: jax.nn.softmax(mask_logits(apply_fn(params, x_chunk, train=False), logit_mask_C), axis=-1),
        chunk,
        x,
    )


def init(params) -> dict[str, jax.Array]:
    """λ, and the batch's new and previously learned classes (the two terms of the MT loss)."""
    no_classes = jnp.zeros(params["params"][HEAD]["bias"].shape, bool)
    return {"lambda": jnp.zeros((), jnp.float32), "new_classes": no_classes, "old_classes": no_classes}


def before_batch(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
    new, old = ctx.classes, ctx.seen_classes & ~ctx.classes
    # SIT: the softmax over the training head; MT: over the previously learned classes. Every
    # (padded) row, B_1 included, so the data keeps one structure. B_1 has λ_1 = 0 (eq. 5): its
    # targets are the one-hot labels whatever ŷ_lwf holds (and MT has no old class yet), so the
    # forward pass is skipped (zeros give bit-identical targets). ``index`` is one value for every
    # member (not vmapped), so the cond really skips the pass.
    head = old if MT_KEY in ctx.data else ctx.logit_mask
    targets = jax.lax.cond(
        ctx.index == 0,
        lambda: jnp.zeros((ctx.data["x"].shape[0], ctx.classes.shape[-1]), jnp.float32),
        lambda: soft_targets(ctx.apply_fn, state.params, ctx.data["x"], head).astype(jnp.float32),
    )
    lam = lwf_lambda(ctx.batch_sizes, ctx.index, ctx.hparams["map_from"], ctx.hparams["map_to"])
    strategy_state = {**state.strategy_state, "lambda": lam, "new_classes": new, "old_classes": old}
    return state._replace(strategy_state=strategy_state), {SOFT_TARGETS: targets}


def lwf(hparams: Mapping[str, Any] | None = None) -> Strategy:
    del hparams  # map_from and map_to are traced: they arrive in ctx.hparams
    return Strategy(
        name="lwf",
        init=init,
        before_batch=before_batch,
        loss=lwf_loss,
        default_head="expanding",
        multi_head_fit="seen",  # MT: the loss splits new and old classes itself (sec. 2.1)
    )


SPEC = StrategySpec(lwf, HPARAMS, doc="Learning without Forgetting (sec. 2.1, eq. 3-5)")
