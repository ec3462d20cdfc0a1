"""CWR+: CWR with mean-shift and zero init (paper section 3.2, Algorithm 2; Appendix E).

Differences from CWR (``cwr.py``):
- zero init: tw = 0 before each batch (line 5). A class of the batch that was consolidated
  before (NI/NIC content) starts from its cw instead, as in the authors' CWR*/AR1* code; in NC
  streams no class repeats and this is exactly Alg. 2.
- mean-shift: cw[j] = tw[j] − avg(tw) for the classes j of the batch (line 10), with no w_i.
  ``avg='batch'`` (default, authors' code): the scalar mean of the kernel columns of the batch's
  classes; ``avg='all'``: the mean of the whole kernel.
- the head bias is held at zero (learning rate 0, ``head.freeze_head_bias``): mean-shift treats
  the weights only, so a trained bias would keep per-batch offsets that cw could not normalise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cljax.engine import TrainState
from cljax.strategies import head
from cljax.strategies.base import BatchContext, Data, Strategy
from cljax.strategies.cwr import eval_with_cw, trains_body_on_first_batch_only

AVERAGES = ("batch", "all")


@jax.jit
def zero_head(tw: head.Params, cw: head.Params, restore_C: jax.Array) -> head.Params:
    """Alg. 2 line 5: tw = 0, except the classes in ``restore_C`` that start from cw; bias 0."""
    return {
        "kernel": jnp.where(restore_C, cw["kernel"], 0).astype(tw["kernel"].dtype),
        "bias": jnp.zeros_like(tw["bias"]),
    }


@functools.partial(jax.jit, static_argnames="avg")
def mean_shift(tw: head.Params, present_C: jax.Array, avg: str = "batch") -> head.Params:
    """Alg. 2 line 10's new class weights tw[j] − avg(tw) (bias: zero).

    ``avg='batch'``: avg is the mean over every entry of the kernel columns j with
    ``present_C[j]`` (the batch's classes); ``avg='all'``: the mean over the whole kernel.
    """
    kernel = tw["kernel"]
    if avg == "batch":
        columns = jnp.sum(present_C.astype(kernel.dtype))
        mean = jnp.sum(jnp.where(present_C, kernel, 0)) / (columns * kernel.shape[0])
    else:
        mean = jnp.mean(kernel)
    return {"kernel": (kernel - mean).astype(kernel.dtype), "bias": jnp.zeros_like(tw["bias"])}


def head_state_of(strategy_state) -> head.HeadState:
    """CWR+ keeps a bare ``HeadState``; AR1 nests it under ``.head``."""
    return strategy_state if isinstance(strategy_state, head.HeadState) else strategy_state.head


def reset_head(state: TrainState, ctx: BatchContext) -> TrainState:
    """Zero-initialised tw (restoring cw for classes seen again) in ``state.params``."""
    consolidated = head_state_of(state.strategy_state)
    counts = head.batch_counts(consolidated.past_counts, ctx.data, ctx.num_examples)
    restore = (counts > 0) & (consolidated.past_counts > 0)
    tw = zero_head(head.head_of(state.params), consolidated.cw, restore)
    return state._replace(params=head.with_head(state.params, tw))


def consolidate_mean_shift(consolidated: head.HeadState, params, ctx: BatchContext, avg: str) -> head.HeadState:
    """Alg. 2-3: cw[j] = tw[j] − avg(tw) for the batch's classes (blending classes seen again)."""
    counts = head.batch_counts(consolidated.past_counts, ctx.data, ctx.num_examples)
    return head.consolidate(consolidated, mean_shift(head.head_of(params), counts > 0, avg), counts)


def _before_batch(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
    return reset_head(state, ctx), ctx.data


def _after_batch(state: TrainState, ctx: BatchContext, avg: str) -> TrainState:
    return state._replace(strategy_state=consolidate_mean_shift(state.strategy_state, state.params, ctx, avg))


def cwr_plus(hparams=None) -> Strategy:
    """hparams: ``avg`` ('batch' | 'all')."""
    avg = hparams.avg if hparams is not None else "batch"
    if avg not in AVERAGES:
        raise ValueError(f"cwr_plus.avg={avg!r} is unknown; allowed: {', '.join(AVERAGES)}")
    return Strategy(
        name="cwr_plus",
        transform=head.freeze_head_bias,
        init=head.init_head_state,
        before_batch=_before_batch,
        after_batch=functools.partial(_after_batch, avg=avg),
        eval_params=eval_with_cw,
        trains_body=trains_body_on_first_batch_only,
    )
