"""CWR, Copy Weight with Re-init (paper section 3.1, Algorithm 1).

- cw = 0 before B_1 (``head.init_head_state``).
- Before each batch the temporary head tw is re-initialised: kernel Gaussian (mean 0, std
  ``init_std`` = 0.01), bias zero (Caffe's constant bias filler).
- B_1 trains the shared weights Θ̄ and tw; later batches train tw only with Θ̄ frozen:
  ``trains_body(i)`` is False for i > 1, so the Trainer computes the penultimate features once
  and fits the head alone (Θ̄ is not touched, no gradient is computed for it).
- After each batch cw[j] = w_i·tw[j] (kernel column and bias) for the classes j of the batch,
  w_1 = ``w_first``, w_i = ``w_rest`` (Table 4: 1.25, 1 for CaffeNet; Table 5: 1, 1); a class seen
  again blends with its past weights (``head.consolidate``).
- Evaluation uses Θ̄ and cw. Maximal head by default (App. A); ``head=expanding`` is an option.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cljax.engine import TrainState
from cljax.strategies import head
from cljax.strategies.base import BatchContext, Data, Strategy


@jax.jit
def gaussian_head(key: jax.Array, tw: head.Params, std: jax.Array) -> head.Params:
    """Alg. 1 line 5: kernel ~ N(0, std²), bias 0, with tw's shapes and dtypes."""
    kernel = tw["kernel"]
    return {
        "kernel": (std * jax.random.normal(key, kernel.shape, jnp.float32)).astype(kernel.dtype),
        "bias": jnp.zeros_like(tw["bias"]),
    }


def trains_body_on_first_batch_only(index: int) -> bool:
    """Alg. 1-2 lines 7-8: Θ̄ learns on B_1 and is frozen afterwards."""
    return index == 0


def _before_batch(state: TrainState, ctx: BatchContext, init_std: float) -> tuple[TrainState, Data]:
    tw = gaussian_head(ctx.key, head.head_of(state.params), jnp.float32(init_std))
    return state._replace(params=head.with_head(state.params, tw)), ctx.data


def _after_batch(state: TrainState, ctx: BatchContext, w_first: float, w_rest: float) -> TrainState:
    w = jnp.float32(w_first if ctx.index == 0 else w_rest)
    scaled = jax.tree.map(lambda t: (w * t).astype(t.dtype), head.head_of(state.params))
    counts = head.batch_counts(state.strategy_state.past_counts, ctx.data, ctx.num_examples)
    return state._replace(strategy_state=head.consolidate(state.strategy_state, scaled, counts))


def eval_with_cw(state: TrainState) -> head.Params:
    """Θ̄ with the consolidated head cw (Alg. 1-2 line 11)."""
    return head.with_head(state.params, state.strategy_state.cw)


def cwr(hparams=None) -> Strategy:
    """hparams: ``w_first``, ``w_rest`` (w_1, w_i>1) and ``init_std`` (tw's Gaussian std)."""
    w_first = float(hparams.w_first) if hparams is not None else 1.0
    w_rest = float(hparams.w_rest) if hparams is not None else 1.0
    init_std = float(hparams.init_std) if hparams is not None else 0.01
    return Strategy(
        name="cwr",
        init=head.init_head_state,
        before_batch=functools.partial(_before_batch, init_std=init_std),
        after_batch=functools.partial(_after_batch, w_first=w_first, w_rest=w_rest),
        eval_params=eval_with_cw,
        trains_body=trains_body_on_first_batch_only,
    )
