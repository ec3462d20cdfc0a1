"""REHE, basic rehearsal (paper sec. 4.4 and its footnote 6).

"The external memory is filled by sampling past examples from both the external memory and the
current training batch. The sampling probability is tuned to balance the number of samples
drawn from different batches." After B_i (i batches seen) the memory keeps ⌊memory_size / i⌋
examples of every batch seen so far: a uniform random subset of what it held of each earlier
batch, plus a uniform random subset of B_i, so every batch is equally represented.

Training on B_i mixes the batch with the memory at a fixed ratio per mini-batch: each SGD step
takes the mini-batch of B_i plus as many examples drawn uniformly (with replacement) from the
memory, and descends the mean loss over both (an empty memory, during B_1, weighs nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax.engine import LossAndGrad, TrainState, any_member
from cljax.hparams import positive
from cljax.strategies import memory as mem
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec

HPARAMS = {
    "memory_size": positive(500, "examples the external memory holds (sec. 4.4: 2500, 4500, 7500 on CORe50)"),
}


def replay(state: TrainState, mini: Data, weights_B: jax.Array, key: jax.Array, loss_and_grad: LossAndGrad):
    """The loss and gradient of the mini-batch of B_i together with as many stored examples. While
    every member's memory is empty (B_1) the stored rows would weigh nothing: the mini-batch alone."""
    memory = state.strategy_state["memory"]

    def with_memory():
        idx, stored_weights = mem.sample(memory, key, weights_B.shape[0])
        both = mem.concat(mini, mem.as_minibatch(memory, idx, mini))
        return loss_and_grad(state.params, both, jnp.concatenate([weights_B, stored_weights]))

    return jax.lax.cond(
        any_member(jnp.any(memory.valid)), with_memory, lambda: loss_and_grad(state.params, mini, weights_B)
    )


def refill(state: TrainState, ctx: BatchContext) -> TrainState:
    """Footnote 6: ⌊memory_size / i⌋ examples of each of the i batches seen, drawn from the memory
    (earlier batches) and from B_i."""
    memory = state.strategy_state["memory"]
    quota = jnp.floor(ctx.hparams["memory_size"] / (ctx.index + 1)).astype(jnp.int32)
    old_key, new_key = jax.random.split(ctx.key)
    memory = memory._replace(rank=mem.random_ranks(jnp.where(memory.valid, memory.batch, mem.NO_GROUP), old_key))
    memory = mem.keep_first(memory, quota)
    rank, selected = mem.select_rows(ctx.num_examples, ctx.data["y"].shape[0], quota, new_key)
    memory = mem.insert(memory, ctx.data, rank, selected, ctx.index)
    return state._replace(strategy_state={**state.strategy_state, "memory": memory})


def rehe(hparams: Mapping[str, Any] | None = None) -> Strategy:
    stream = mem.stream_shape(hparams, "rehe")
    slots = mem.memory_slots(stream.largest["memory_size"])
    return Strategy(
        name="rehe",
        init=lambda params: {"memory": mem.empty_memory(slots, stream)},
        after_batch=refill,
        gradients=replay,
    )


SPEC = StrategySpec(rehe, HPARAMS, doc="basic rehearsal: a memory balanced over the batches seen (sec. 4.4)")
