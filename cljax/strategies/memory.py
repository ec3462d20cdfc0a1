"""The fixed-capacity external memory of the rehearsal strategies (paper sec. 4.4: REHE, GEM, iCaRL).

A ``Memory`` is a pytree of arrays with a fixed number of slots S: the stored images in the
stream's own dtype, their labels, a validity mask, the batch each came from, and its *rank*,
the order in which it was selected within its group (a class for iCaRL, a batch for REHE and
GEM). Every update is a pure, jittable function that keeps every leaf's shape and dtype, so a
strategy carrying a memory compiles once for the whole stream:

- ``keep_first(memory, quota_S)``: shrink, keeping in each group the slots ranked below its quota
  (iCaRL keeps each class's first exemplars; REHE re-ranks at random first, ``random_ranks``);
- ``insert(memory, data, rank_N, selected_N, batch, allowed_S)``: write the selected rows of a
  batch, in rank order, into free slots;
- ``sample(memory, key, n)``: slots drawn uniformly from the valid ones (replay mini-batches).

How many slots a strategy needs depends on the stream (GEM: memory_size / T per batch) and on
the largest memory size of a hyper-grid (``memory_size`` is traced: the grid points of one
program share one buffer, each using as much of it as its own size allows). ``StreamShape``
carries both to the strategy's factory (``StrategyJob.build`` passes it as ``hparams["stream"]``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

STREAM = "stream"  # key of the ``StreamShape`` in the mapping a factory receives
NO_GROUP = np.iinfo(np.int32).max  # group id of the slots or rows that belong to none


@dataclasses.dataclass(frozen=True)
class StreamShape:
    """What fixes the shapes of a strategy's state over a whole job (every batch, run and grid point)."""

    input_shape: tuple[int, ...]
    input_dtype: str  # the dtype the stream's images are stored in (the memory keeps it)
    num_classes: int  # C
    num_batches: int  # T
    largest: Mapping[str, float] = dataclasses.field(default_factory=dict)  # traced hparam -> max over grid points


def stream_shape(hparams: Mapping[str, Any] | None, strategy: str) -> StreamShape:
    """The ``StreamShape`` a factory was given; a clear error when it was built without one."""
    stream = None if hparams is None else hparams.get(STREAM)
    if not isinstance(stream, StreamShape):
        raise ValueError(
            f"strategy {strategy!r} sizes its memory by the stream: build it with "
            "make_strategy(name, hparams, stream=StreamShape(...)) (StrategyJob.build does)"
        )
    return stream


def memory_slots(memory_size: float) -> int:
    """Slots for a memory of ``memory_size`` examples (at least one, so that shapes stay non-empty)."""
    return max(int(math.floor(memory_size)), 1)


class Memory(NamedTuple):
    """S stored examples; a slot is used only where ``valid``."""

    x: jax.Array  # [S, *input_shape], the stream's dtype
    y: jax.Array  # int32 [S]
    valid: jax.Array  # bool [S]
    batch: jax.Array  # int32 [S]: index of the batch the example came from (the task of MT heads)
    rank: jax.Array  # int32 [S]: selection order within its group (herding order for iCaRL)


def empty_memory(slots: int, stream: StreamShape) -> Memory:
    zeros = jnp.zeros((slots,), jnp.int32)
    return Memory(
        x=jnp.zeros((slots, *stream.input_shape), jnp.dtype(stream.input_dtype)),
        y=zeros,
        valid=jnp.zeros((slots,), bool),
        batch=zeros,
        rank=zeros,
    )


def group_ranks(groups_N: jax.Array, priority_N: jax.Array) -> jax.Array:
    """Rank of each element within its group, lowest ``priority`` first (0, 1, 2, ...).

    One sort by (group, priority): an element's rank is its position minus that of its group's
    first element."""
    n = groups_N.shape[0]
    order = jnp.lexsort((priority_N, groups_N))
    position = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    first = jnp.searchsorted(groups_N[order], groups_N, side="left").astype(jnp.int32)
    return position - first


def random_ranks(groups_N: jax.Array, key: jax.Array) -> jax.Array:
    """A uniformly random order within each group (``group_ranks`` with random priorities)."""
    return group_ranks(groups_N, jax.random.uniform(key, groups_N.shape))


def keep_first(memory: Memory, quota_S: jax.Array) -> Memory:
    """Frees the slots whose rank is not below their group's quota (``quota_S``, one per slot)."""
    return memory._replace(valid=memory.valid & (memory.rank < quota_S))


def insert(
    memory: Memory,
    data: Mapping[str, jax.Array],
    rank_N: jax.Array,
    selected_N: jax.Array,
    batch: jax.Array,
    allowed_S: jax.Array | None = None,
) -> Memory:
    """Writes the ``selected`` rows of ``data`` (``x``, ``y``), lowest rank first, into the free
    slots (those ``allowed``, default all), lowest slot first; each keeps its rank and ``batch``.
    Rows beyond the free slots are dropped (callers size their quotas so that none are)."""
    slots, rows = memory.valid.shape[0], selected_N.shape[0]
    free = ~memory.valid if allowed_S is None else allowed_S & ~memory.valid
    k = min(slots, rows)
    row_order = jnp.argsort(jnp.where(selected_N, rank_N, NO_GROUP), stable=True)[:k]
    slot_order = jnp.argsort((~free).astype(jnp.int32), stable=True)[:k]  # free slots first, in slot order
    count = jnp.minimum(jnp.sum(selected_N), jnp.sum(free))
    write = jnp.arange(k) < count

    def put(stored, new):
        where = write.reshape((k,) + (1,) * (stored.ndim - 1))
        return stored.at[slot_order].set(jnp.where(where, new.astype(stored.dtype), stored[slot_order]))

    return Memory(
        x=put(memory.x, data["x"][row_order]),
        y=put(memory.y, data["y"][row_order]),
        valid=put(memory.valid, jnp.ones((k,), bool)),
        batch=put(memory.batch, jnp.full((k,), batch, jnp.int32)),
        rank=put(memory.rank, rank_N[row_order]),
    )


def select_rows(num_rows: jax.Array, capacity: int, quota: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``quota`` rows drawn uniformly without replacement among the first ``num_rows`` of ``capacity``
    (all of them if fewer): (rank [capacity], selected [capacity])."""
    real = jnp.arange(capacity) < num_rows
    ranks = random_ranks(jnp.where(real, 0, NO_GROUP), key)
    return ranks, real & (ranks < quota)


def sample(memory: Memory, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """``n`` slots drawn uniformly, with replacement, among the valid ones: (indices [n], weights
    [n], 1.0 for a valid draw, 0.0 when the memory is empty)."""
    valid = memory.valid.astype(jnp.float32)
    p = valid / jnp.maximum(jnp.sum(valid), 1.0)
    idx = jax.random.choice(key, valid.shape[0], (n,), replace=True, p=p)
    return idx, valid[idx]


def as_minibatch(memory: Memory, idx: jax.Array, like: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Stored examples ``idx`` as a training mini-batch with the keys of ``like``: ``x``, ``y``, and in
    the multi-task setting ``mask_index``, each example's task head (its batch, in NC streams)."""
    mini = {"x": memory.x[idx], "y": memory.y[idx]}
    if "mask_index" in like:
        mini["mask_index"] = memory.batch[idx]
    return mini


def concat(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Two mini-batches with the same keys as one (``a`` first), in ``a``'s dtypes."""
    return {k: jnp.concatenate([a[k], b[k].astype(a[k].dtype)]) for k in a}


def counts(memory: Memory, groups_S: jax.Array, num_groups: int) -> jax.Array:
    """Valid slots per group: int32 [num_groups] (``groups_S``: e.g. ``memory.y`` or ``memory.batch``)."""
    return jax.ops.segment_sum(memory.valid.astype(jnp.int32), groups_S, num_groups)
