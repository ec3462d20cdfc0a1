"""GEM, Gradient Episodic Memory (Lopez-Paz & Ranzato 2017), as the paper compares it (sec. 4.4).

The episodic memory holds ⌊memory_size / T⌋ examples of each batch (T the stream's batches), a
uniform random subset of the batch stored after training on it, so it reaches its budget only
after the last batch ("GEM uses a fixed amount of memory for each batch", sec. 4.4).

Each SGD step computes the mini-batch gradient g and, for every past batch k, the gradient g_k of
the loss on its memory (M stacks them as rows). If some ⟨g, g_k⟩ < 0, g is replaced by the
projection of the authors' code: the dual quadratic program

    min_v ½ vᵀ(MMᵀ + εI)v + (Mg)ᵀv   subject to   v ≥ margin   (ε = 1e-3)

gives g̃ = Mᵀv + g (``margin`` is GEM's ``memory_strength``). ``solve_dual`` solves it inside the
compiled step with an exact active-set method (Lawson-Hanson), so there is no host round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax.engine import LossAndGrad, TrainState
from cljax.hparams import non_negative, positive
from cljax.strategies import memory as mem
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec

HPARAMS = {
    "memory_size": positive(500, "examples the memory holds after the last batch: memory_size / T per batch"),
    "margin": non_negative(0.5, "GEM's memory_strength: the dual variables' lower bound (v ≥ margin)"),
}
EPSILON = 1e-3  # the authors' ridge on MMᵀ
HIGHEST = jax.lax.Precision.HIGHEST  # Gram matrices in true float32 (GPUs default to TF32-like dots)


def nonnegative_qp(q_KxK: jax.Array, b_K: jax.Array, allowed_K: jax.Array, max_iter: int | None = None) -> jax.Array:
    """argmin_u ½ uᵀQu + bᵀu subject to u ≥ 0, and u_k = 0 where not ``allowed`` (Q positive definite).

    Lawson-Hanson's active-set method: grow the set of free (positive) coordinates one at a time by
    the largest negative gradient, solve the equality-constrained problem on it, and step back to
    the boundary whenever that solution leaves the feasible set. Exact after finitely many steps
    (at most a few per coordinate); ``max_iter`` bounds the loop under jit."""
    k = b_K.shape[0]
    max_iter = 3 * k + 3 if max_iter is None else max_iter
    scale = jnp.maximum(jnp.max(jnp.diag(q_KxK)), 1e-30)  # the minimiser does not change; tolerances become relative
    q, b = q_KxK / scale, b_K / scale
    tol = 1e-6 * (1.0 + jnp.max(jnp.abs(b)))
    eye = jnp.eye(k, dtype=q.dtype)

    def solve_on(free):
        a = jnp.where(free[:, None] & free[None, :], q, eye)
        return jnp.linalg.solve(a, jnp.where(free, -b, 0.0))

    def body(carry):
        u, free, it, _ = carry
        z = solve_on(free)
        feasible = jnp.all(~free | (z > 0))
        # z is optimal on its free set: free the coordinate that most wants to grow, if any.
        w = -(jnp.dot(q, z, precision=HIGHEST) + b)
        candidates = allowed_K & ~free & (w > tol)
        j = jnp.argmax(jnp.where(candidates, w, -jnp.inf))
        grown = free | (candidates.any() & (jnp.arange(k) == j))
        # z left the feasible set: go from u towards z until a coordinate hits zero, and bind it.
        blocking = free & (z <= 0)
        gap = u - z
        ratio = jnp.where(blocking, u / jnp.where(gap > 0, gap, 1.0), jnp.inf)
        alpha = jnp.min(ratio)
        stepped = jnp.maximum(u + alpha * (z - u), 0.0)
        bound = (jnp.arange(k) == jnp.argmin(ratio)) | (stepped <= 1e-12)
        return (
            jnp.where(feasible, z, jnp.where(bound, 0.0, stepped)),
            jnp.where(feasible, grown, free & ~bound),
            it + 1,
            feasible & ~candidates.any(),
        )

    init = (jnp.zeros_like(b), jnp.zeros((k,), bool), jnp.int32(0), jnp.bool_(False))
    u, _, _, _ = jax.lax.while_loop(lambda c: ~c[3] & (c[2] < max_iter), body, init)
    return u


def solve_dual(gram_KxK: jax.Array, mg_K: jax.Array, active_K: jax.Array, margin) -> jax.Array:
    """GEM's dual: argmin_v ½ vᵀ(MMᵀ + εI)v + (Mg)ᵀv subject to v_k ≥ margin for the ``active``
    constraints (past batches with a memory); v_k = 0 for the others."""
    k = mg_K.shape[0]
    q = gram_KxK + EPSILON * jnp.eye(k, dtype=gram_KxK.dtype)
    lower = jnp.where(active_K, margin, 0.0).astype(q.dtype)
    # v = lower + u with u ≥ 0: ½ uᵀQu + (Q·lower + Mg)ᵀu + const.
    u = nonnegative_qp(q, jnp.dot(q, lower, precision=HIGHEST) + mg_K, active_K)
    return jnp.where(active_K, lower + u, 0.0)


def row_dots(m_K: Any, g: Any) -> jax.Array:
    """[K]: ⟨M_k, g⟩ for each row k of ``m_K`` (every leaf stacked on a leading K axis), summed over
    the leaves: one matrix-vector product per leaf."""
    pairs = zip(jax.tree.leaves(m_K), jax.tree.leaves(g), strict=True)
    return sum(jnp.einsum("k...,...->k", rows, leaf, precision=HIGHEST) for rows, leaf in pairs)


def project(g: Any, m_K: Any, active_K: jax.Array, margin) -> Any:
    """g itself when no active ⟨g, g_k⟩ is negative, else g̃ = Mᵀv + g with v from ``solve_dual``.

    ``g`` is a gradient pytree (or a flat vector) and ``m_K`` the past batches' gradients, each leaf
    stacked on a leading K axis. The work stays leaf by leaf: raveling the gradients into one vector
    cost a copy of the parameters per step, and XLA:CPU ran the [K, P] x [P, K] dot for MMᵀ ~3x
    slower than K matrix-vector products (it transposes M first; BUILD_NOTES, "Where GEM's step time
    goes")."""
    k = active_K.shape[0]
    mg = row_dots(m_K, g)
    conflict = jnp.any(active_K & (mg < 0))
    gram = jnp.stack([row_dots(m_K, jax.tree.map(lambda rows, j=j: rows[j], m_K)) for j in range(k)])
    v = solve_dual(gram, mg, active_K, margin)

    def projected(rows, leaf):
        return jnp.where(conflict, jnp.einsum("k,k...->...", v, rows, precision=HIGHEST) + leaf, leaf)

    return jax.tree.map(projected, m_K, g)


def make_gradients(num_batches: int):
    def gradients(state: TrainState, mini: Data, weights_B: jax.Array, key: jax.Array, loss_and_grad: LossAndGrad):
        """The mini-batch gradient, projected against each past batch's memory gradient."""
        del key
        memory, margin = state.strategy_state["memory"], state.strategy_state["margin"]
        loss, grads = loss_and_grad(state.params, mini, weights_B)
        idx_TxQ = jnp.arange(memory.valid.shape[0]).reshape(num_batches, -1)  # batch k's slots: row k
        valid_TxQ = memory.valid[idx_TxQ]
        active = valid_TxQ.any(axis=1)  # past batches (B_i's own memory is stored after training on it)

        num_past = jnp.max(jnp.where(memory.valid, memory.batch + 1, 0))

        def past_gradient(k, m_T):
            _, g_k = loss_and_grad(
                state.params, mem.as_minibatch(memory, idx_TxQ[k], mini), valid_TxQ[k].astype(jnp.float32)
            )
            return jax.tree.map(lambda rows, leaf: rows.at[k].set(leaf), m_T, g_k)

        # Only the batches seen so far (the loop's length is data: nothing recompiles); M as the
        # gradient's pytree, each leaf with a leading axis of T rows (rows not reached stay zero).
        m = jax.tree.map(lambda leaf: jnp.zeros((num_batches, *leaf.shape), leaf.dtype), grads)
        m = jax.lax.fori_loop(0, num_past, past_gradient, m)
        return loss, project(grads, m, active, margin)

    return gradients


def keep_margin(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
    """The traced margin into the state, where the per-step gradient reads it."""
    margin = jnp.asarray(ctx.hparams["margin"], jnp.float32)
    return state._replace(strategy_state={**state.strategy_state, "margin": margin}), {}


def store_batch(state: TrainState, ctx: BatchContext) -> TrainState:
    """⌊memory_size / T⌋ random examples of B_i into B_i's own slots."""
    memory = state.strategy_state["memory"]
    num_batches = ctx.batch_sizes.shape[0]
    per_batch = memory.valid.shape[0] // num_batches
    quota = jnp.floor(ctx.hparams["memory_size"] / num_batches).astype(jnp.int32)
    rank, selected = mem.select_rows(ctx.num_examples, ctx.data["y"].shape[0], quota, ctx.key)
    allowed = jnp.arange(memory.valid.shape[0]) // per_batch == ctx.index
    memory = mem.insert(memory, ctx.data, rank, selected, ctx.index, allowed)
    return state._replace(strategy_state={**state.strategy_state, "memory": memory})


def gem(hparams: Mapping[str, Any] | None = None) -> Strategy:
    stream = mem.stream_shape(hparams, "gem")
    num_batches = stream.num_batches
    per_batch = max(int(stream.largest["memory_size"] // num_batches), 1)
    slots = per_batch * num_batches  # batch k's slots: [k·per_batch, (k+1)·per_batch)

    def init(params):
        del params
        return {"memory": mem.empty_memory(slots, stream), "margin": jnp.zeros((), jnp.float32)}

    return Strategy(
        name="gem",
        init=init,
        before_batch=keep_margin,
        after_batch=store_batch,
        gradients=make_gradients(num_batches),
    )


SPEC = StrategySpec(gem, HPARAMS, doc="Gradient Episodic Memory: gradients projected by a QP (sec. 4.4)")
