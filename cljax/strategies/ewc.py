"""EWC, Elastic Weight Consolidation, as the paper adapts it to SIT (sec. 2.2, App. A).

After training on B_i: F^i = diagonal (empirical) Fisher on B_i, the mean over
its patterns of the squared per-pattern gradients of the task loss; consolidate
F = F + F^i, F̂ = clip(F / i, max_F) (eq. 8); Θ* = the current weights. During
the next batches the quadratic penalty (λ/2)·Σ F̂_k·(θ_k − θ*_k)² (eq. 6) pulls
the weights toward Θ* in weight-decay style (eq. 7, ``transforms.quadratic_anchor_penalty``).

The Fisher is computed over fixed-size chunks of the padded batch (``fisher_batch_size``
patterns each; padding rows weighted zero, so one compilation serves every batch) by
``cljax.fisher``: for Dense and Conv layers the sum of squared per-pattern gradients
comes from one forward and backward pass per chunk, without per-pattern gradients. ``fisher='minibatch'``
is the paper's faster variant (App. A): the mean of squared *mini-batch*
gradients, ``fisher_batch_size`` patterns per mini-batch in a random order.
The logits get the training head's mask, as during training.

Stability of eq. 7 needs η·λ·max_F ≤ 1; Table 4's own values give about 1.2, so an
excess is a warning, not an error. λ and max_F are traced hyperparameters (``ctx.hparams``):
λ is written into the penalty's state before each batch, so a grid over them is one program.

``importance='adam_nu'`` (past the paper, its conclusion's proposal): F^i is the optimizer's
running mean of squared gradients ν (Adam), read from its state after B_i: no Fisher pass.
Eq. 8's consolidation and the penalty are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax import fisher, transforms
from cljax.engine import Params, TrainState, cross_entropy, mask_logits
from cljax.hparams import choice, positive, positive_int
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec
from cljax.strategies.penalty import ADAM_NU, adam_nu_importance, check_penalty, importance_choice, set_strength

FISHER_MODES = ("per_example", "minibatch")

HPARAMS = {
    "strength": positive(2e5, "λ of the penalty (eq. 7); 1/(η·max_F) is the largest stable value"),
    "max_f": positive(1e-3, "max_F, the clip of F̂ (eq. 8; Table 4: 0.001)"),
    "fisher": choice("per_example", FISHER_MODES, "per_example: squared per-pattern gradients | minibatch (App. A)"),
    "fisher_batch_size": positive_int(64, "per_example: patterns per chunk; minibatch: patterns per mini-batch"),
    "importance": importance_choice("fisher"),
}
TRAINING = {"lr": 0.005}  # B_i>1 learning rate, lower than B_1's (Table 4 does the same)


def _example_losses(apply_fn, params, x, y, logit_mask):
    """Per-pattern task losses, the logits masked by the training head (as in training)."""
    logits = apply_fn(params, x, train=False)
    return cross_entropy(mask_logits(logits, logit_mask), {"y": y}, None)


@functools.partial(jax.jit, static_argnames=("apply_fn", "mode", "chunk"))
def diagonal_fisher(
    apply_fn: Callable[..., jax.Array],
    params: Params,
    x: jax.Array,
    y: jax.Array,
    num_examples,
    logit_mask: jax.Array,
    key: jax.Array,
    mode: str = "per_example",
    chunk: int = 64,
) -> Params:
    """F^i: the mean over the first ``num_examples`` rows of the squared gradients of the task loss.

    ``mode='per_example'``: per-pattern gradients, ``chunk`` rows at a time, squared and summed by
    ``cljax.fisher`` (one forward and backward pass per chunk for Dense and Conv layers; vmap of
    grad for any other parameter).
    ``mode='minibatch'``: gradients of the mean loss over mini-batches of ``chunk`` rows
    (a random grouping drawn from ``key``), squared and averaged over mini-batches, each
    weighted by its number of real rows (App. A's faster variant).
    """
    capacity = x.shape[0]
    num_examples = jnp.asarray(num_examples, jnp.int32)
    padded = -(-capacity // chunk) * chunk
    if mode == "minibatch":  # random grouping of the real rows; padding rows sort last
        noise = jax.random.uniform(key, (capacity,))
        order = jnp.argsort(jnp.where(jnp.arange(capacity) < num_examples, noise, 2.0))
        x, y = x[order], y[order]
    x = jnp.concatenate([x, jnp.zeros((padded - capacity,) + x.shape[1:], x.dtype)])
    y = jnp.concatenate([y, jnp.zeros((padded - capacity,), y.dtype)])
    weights = (jnp.arange(padded) < num_examples).astype(jnp.float32)  # padding rows weigh zero
    losses = functools.partial(_example_losses, apply_fn, logit_mask=logit_mask)
    layers = fisher.find_layers(losses, params, x[:chunk], y[:chunk]) if mode == "per_example" else ()

    def chunk_sum(args):
        x_c, y_c, w_c = args
        if mode == "per_example":
            return fisher.squared_gradient_sums(losses, layers, params, w_c, x_c, y_c)
        count = jnp.sum(w_c)

        def mean_loss(p):
            return jnp.sum(losses(p, x_c, y_c) * w_c) / jnp.maximum(count, 1.0)

        return jax.tree.map(lambda gi: count * gi**2, jax.grad(mean_loss)(params))

    sums = fisher.sum_over_chunks(chunk_sum, params, chunk, x, y, weights)
    denominator = jnp.maximum(num_examples, 1).astype(jnp.float32)
    return jax.tree.map(lambda s, p: (s / denominator).astype(p.dtype), sums, params)


@jax.jit
def ewc_consolidate(fisher_sum: Params, batch_fisher: Params, batches_seen, max_f) -> tuple[Params, Params]:
    """Eq. 8: F = F + F^i; F̂ = clip(F / i, max_F), ``batches_seen`` = i (1-based). Returns (F, F̂)."""
    fisher_sum = jax.tree.map(jnp.add, fisher_sum, batch_fisher)
    i = jnp.asarray(batches_seen, jnp.float32)
    f_hat = jax.tree.map(lambda f: jnp.minimum(f / i, max_f).astype(f.dtype), fisher_sum)
    return fisher_sum, f_hat


def ewc(hparams: Mapping[str, Any]) -> Strategy:
    mode, chunk = hparams["fisher"], int(hparams["fisher_batch_size"])
    source = hparams.get("importance", "fisher")

    def transform(base_tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return optax.chain(transforms.anchor_penalty_in_state(), base_tx)

    def init(params: Params) -> dict[str, Any]:
        return {"fisher_sum": jax.tree.map(jnp.zeros_like, params)}

    def before_batch(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
        return set_strength(state, ctx), {}

    def batch_importance(state: TrainState, ctx: BatchContext) -> Params:
        if source == ADAM_NU:  # the optimizer's ν: a state read, no pass over the batch
            return adam_nu_importance(state.opt_state, state.strategy_state["fisher_sum"])
        return diagonal_fisher(
            ctx.apply_fn,
            state.params,
            ctx.data["x"],
            ctx.data["y"],
            ctx.num_examples,
            ctx.logit_mask,
            ctx.key,
            mode=mode,
            chunk=chunk,
        )

    def after_batch(state: TrainState, ctx: BatchContext) -> TrainState:
        batch_fisher = batch_importance(state, ctx)
        fisher_sum, f_hat = ewc_consolidate(
            state.strategy_state["fisher_sum"], batch_fisher, ctx.index + 1, ctx.hparams["max_f"]
        )
        opt_state = transforms.replace_anchor_state(state.opt_state, anchor=state.params, importance=f_hat)
        return TrainState(state.params, opt_state, {**state.strategy_state, "fisher_sum": fisher_sum})

    def importance(state: TrainState) -> dict[str, Any]:
        return transforms.importance_report(state.strategy_state["fisher_sum"], state.opt_state)

    return Strategy(
        name="ewc",
        transform=transform,
        init=init,
        before_batch=before_batch,
        after_batch=after_batch,
        importance=importance,
    )


SPEC = StrategySpec(
    ewc,
    HPARAMS,
    TRAINING,
    doc="Elastic Weight Consolidation (sec. 2.2, eq. 6-8)",
    check=lambda v: check_penalty(v, "ewc"),
)
