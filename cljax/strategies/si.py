"""SI, Synaptic Intelligence, as the paper adapts it to SIT (sec. 2.3, App. A).

During training on B_i the path tracker (``transforms.si_path_tracker``, last in
the chain) accumulates, per weight, Σ −g_k·Δθ_k over every optimizer step, g the
task-loss gradient and Δθ the applied update (eq. 9, sign as in PAPER_NOTES).
After B_i: F^i_k = path_k / (T_k² + ξ), T_k the total move of θ_k during B_i
(eq. 10), clipped at zero (with the penalty active −g·Δθ can turn negative;
PAPER_NOTES); F = F + w_i·F^i, F̂ = clip(F, max_F) (eq. 11), with w_1 = ``w_first``
and w_i = ``w_rest`` for i > 1; Θ* = the current weights. The penalty is EWC's
(eq. 6-7, ``transforms.quadratic_anchor_penalty``). Before every batch the
tracker's path is zeroed and its start point set to the current weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax import transforms
from cljax.engine import Params, TrainState
from cljax.strategies.base import BatchContext, Data, Strategy
from cljax.strategies.ewc import warn_if_unstable


@jax.jit
def si_consolidate(importance: Params, batch_importance: Params, weight, max_f) -> tuple[Params, Params]:
    """Eq. 11: F = F + w_i·F^i; F̂ = clip(F, max_F). Returns (F, F̂); masked leaves stay masked."""
    importance = transforms.map_unmasked(lambda f, fi: (f + weight * fi).astype(f.dtype), importance, batch_importance)
    f_hat = transforms.map_unmasked(lambda f: jnp.minimum(f, max_f).astype(f.dtype), importance)
    return importance, f_hat


def si(hparams) -> Strategy:
    strength, max_f, xi = float(hparams.strength), float(hparams.max_f), float(hparams.xi)
    w_first, w_rest = float(hparams.w_first), float(hparams.w_rest)
    warn_if_unstable(float(hparams.lr), strength, max_f, "si")

    def transform(base_tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return optax.chain(transforms.quadratic_anchor_penalty(strength), base_tx, transforms.si_path_tracker())

    def init(params: Params) -> dict[str, Any]:
        return {"importance": jax.tree.map(jnp.zeros_like, params)}

    def before_batch(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
        return state._replace(opt_state=transforms.reset_si_path(state.opt_state, state.params)), ctx.data

    def after_batch(state: TrainState, ctx: BatchContext) -> TrainState:
        tracker = transforms.si_path_state(state.opt_state)
        batch_importance = transforms.si_batch_importance(tracker, state.params, xi)
        weight = w_first if ctx.index == 0 else w_rest
        importance, f_hat = si_consolidate(state.strategy_state["importance"], batch_importance, weight, max_f)
        opt_state = transforms.replace_anchor_state(state.opt_state, anchor=state.params, importance=f_hat)
        return TrainState(state.params, opt_state, {**state.strategy_state, "importance": importance})

    def importance(state: TrainState) -> dict[str, Any]:
        return transforms.importance_report(state.strategy_state["importance"], state.opt_state, max_f)

    return Strategy(
        name="si",
        transform=transform,
        init=init,
        before_batch=before_batch,
        after_batch=after_batch,
        importance=importance,
    )
