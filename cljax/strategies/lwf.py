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
``map_from``. λ_i lives in the strategy state as a float32 scalar, so changing
it does not recompile the training step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from cljax.engine import TrainState, mask_logits
from cljax.strategies.base import BatchContext, Data, Strategy

SOFT_TARGETS = "soft_targets"  # key of the per-example [capacity, C] soft targets in the training data
SOFT_TARGET_CHUNK = 1000  # examples per forward pass when computing soft targets (bounded memory)


def linear_map(x: float, map_from: Sequence[float], map_to: Sequence[float]) -> float:
    """The linear map taking ``map_from[0]`` to ``map_to[0]`` and ``map_from[1]`` to ``map_to[1]`` (eq. 5's map)."""
    (a, b), (c, d) = map_from, map_to
    return c + (x - a) * (d - c) / (b - a)


def lwf_lambda(batch_sizes: Sequence[int], map_from: Sequence[float], map_to: Sequence[float]) -> float:
    """λ_i of eq. 5 for the last batch of ``batch_sizes`` = (n_1, ..., n_i); clipped to [0, 1]."""
    if len(batch_sizes) <= 1:
        return 0.0
    x = 1.0 - batch_sizes[-1] / sum(batch_sizes)
    return float(min(max(linear_map(x, map_from, map_to), 0.0), 1.0))


def lwf_loss(logits_BxC: jax.Array, batch: Data, strategy_state: dict[str, jax.Array]) -> jax.Array:
    """Per-example eq. 3: CE(ŷ, (1 − λ)·onehot(y) + λ·ŷ_lwf)."""
    lam = strategy_state["lambda"]
    onehot = jax.nn.one_hot(batch["y"], logits_BxC.shape[-1], dtype=logits_BxC.dtype)
    targets = (1.0 - lam) * onehot + lam * batch[SOFT_TARGETS]
    return optax.softmax_cross_entropy(logits_BxC, targets)


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk"))
def soft_targets(apply_fn, params, x: jax.Array, logit_mask_C: jax.Array, chunk: int = SOFT_TARGET_CHUNK) -> jax.Array:
    """ŷ_lwf = softmax over the training head of the current network, for every row of ``x``."""
    n = x.shape[0]
    chunk = min(chunk, n)
    padded = -(-n // chunk) * chunk
    x = jnp.concatenate([x, jnp.zeros((padded - n,) + x.shape[1:], x.dtype)])

    def one_chunk(x_chunk):
        return jax.nn.softmax(mask_logits(apply_fn(params, x_chunk, train=False), logit_mask_C), axis=-1)

    probs = jax.lax.map(one_chunk, x.reshape((-1, chunk) + x.shape[1:]))
    return probs.reshape((padded, -1))[:n]


def lwf(hparams) -> Strategy:
    map_from, map_to = tuple(hparams.map_from), tuple(hparams.map_to)

    def init(params):
        del params
        return {"lambda": jnp.zeros((), jnp.float32)}

    def before_batch(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
        # Soft targets for every (padded) row, B_1 included, so the data keeps one structure.
        targets = soft_targets(ctx.apply_fn, state.params, ctx.data["x"], ctx.logit_mask)
        lam = jnp.asarray(lwf_lambda(ctx.batch_sizes, map_from, map_to), jnp.float32)
        state = state._replace(strategy_state={**state.strategy_state, "lambda": lam})
        return state, {**ctx.data, SOFT_TARGETS: targets}

    return Strategy(name="lwf", init=init, before_batch=before_batch, loss=lwf_loss, default_head="expanding")
