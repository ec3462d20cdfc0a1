"""CWR, Copy Weight with Re-init (paper section 3.1, Algorithm 1).

- cw = 0 before B_1 (``head.init_head_state``).
- Before each batch the temporary head tw is re-initialised: kernel Gaussian (mean 0, std
  ``init_std`` = 0.01), bias zero (Caffe's constant bias filler), with a fresh optimizer state.
- B_1 trains the shared weights Θ̄ and tw; later batches train tw only: Θ̄ is frozen by an optax
  transformation (``transforms.freeze_body``, set from B_2 on), so it stays bitwise unchanged.
  The engine trains such batches on penultimate features computed once when that gives the same
  result (a body without dropout); otherwise it runs the masked full fit.
- The head bias: footnote 4 (sec. 3.1) makes class j's consolidated subset cw[j] its D weights
  from the penultimate layer, so by default (``train_bias=False``) the bias is held at zero
  (learning rate 0, ``head.freeze_head_bias``, as CWR+ and AR1) and cw's bias stays zero;
  ``train_bias=True`` trains tw's bias and copies it into cw with the kernel.
- After each batch cw[j] = w_i·tw[j] (kernel column, and bias) for the classes j of the batch,
  w_1 = ``w_first``, w_i = ``w_rest`` (Table 4: 1.25, 1 for CaffeNet; Table 5: 1, 1); a class seen
  again blends with its past weights (``head.consolidate``).
- Evaluation uses Θ̄ and cw. Maximal head by default (App. A); ``head=expanding`` is an option.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax import transforms
from cljax.engine import TrainState
from cljax.hparams import flag, non_negative
from cljax.models import HEAD
from cljax.strategies import head
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec

HPARAMS = {
    "w_first": non_negative(1.0, "w_1: cw[j] = w_1·tw[j] after B_1 (Alg. 1 line 10; Table 4 CaffeNet: 1.25)"),
    "w_rest": non_negative(1.0, "w_i, i > 1"),
    "init_std": non_negative(0.01, "std of tw's Gaussian re-initialisation (Alg. 1 line 5; 0 = zeros)"),
    "train_bias": flag(False, "False: bias held at 0, cw[j] = weights only (footnote 4) | True: trained, copied"),
}
TRAINING = {"epochs": 20, "lr": 0.02}  # B_i>1 trains the head alone: cheap


@jax.jit
def gaussian_head(key: jax.Array, tw: head.Params, std: jax.Array) -> head.Params:
    """Alg. 1 line 5: kernel ~ N(0, std²), bias 0, with tw's shapes and dtypes."""
    kernel = tw["kernel"]
    return {
        "kernel": (std * jax.random.normal(key, kernel.shape, jnp.float32)).astype(kernel.dtype),
        "bias": jnp.zeros_like(tw["bias"]),
    }


def transform(
    base_tx: optax.GradientTransformation, train_bias: bool = False, path: str = HEAD
) -> optax.GradientTransformation:
    head_tx = base_tx if train_bias else head.freeze_head_bias(base_tx, path)  # footnote 4: weights only
    return optax.chain(head_tx, transforms.freeze_body(path))


def before_batch(state: TrainState, ctx: BatchContext, path: str = HEAD) -> tuple[TrainState, Data]:
    tw = gaussian_head(ctx.key, head.head_of(state.params, path), ctx.hparams["init_std"])
    params = head.with_head(state.params, tw, path)
    return TrainState(params, head.fresh_optimizer(params, ctx.tx, ctx.index), state.strategy_state), {}


def after_batch(state: TrainState, ctx: BatchContext, path: str = HEAD) -> TrainState:
    w = jnp.where(ctx.index == 0, ctx.hparams["w_first"], ctx.hparams["w_rest"])
    scaled = jax.tree.map(lambda t: (w * t).astype(t.dtype), head.head_of(state.params, path))
    return state._replace(strategy_state=head.consolidate(state.strategy_state, scaled, ctx.class_counts))


def cwr(hparams: Mapping[str, Any] | None = None, classifier: str = HEAD) -> Strategy:
    # w_first, w_rest and init_std are traced: they arrive in ctx.hparams.
    train_bias = False if hparams is None else bool(hparams["train_bias"])
    on = functools.partial
    return Strategy(
        name="cwr",
        transform=on(transform, train_bias=train_bias, path=classifier),
        init=on(head.init_head_state, path=classifier),
        before_batch=on(before_batch, path=classifier),
        after_batch=on(after_batch, path=classifier),
        eval_params=on(head.eval_with_cw, path=classifier),
    )


SPEC = StrategySpec(cwr, HPARAMS, TRAINING, doc="Copy Weight with Re-init (sec. 3.1, Alg. 1)")
