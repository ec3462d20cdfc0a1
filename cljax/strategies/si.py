"""SI, Synaptic Intelligence, as the paper adapts it to SIT (sec. 2.3, App. A).

During training on B_i the path tracker (``transforms.si_path_tracker``, last in
the chain) accumulates, per weight, Σ −g_k·Δθ_k over every optimizer step, g the
task-loss gradient and Δθ the applied update (eq. 9; the minus sign makes the
importance non-negative for SGD, which the paper's eq. 9 drops).
After B_i: F^i_k = path_k / (T_k² + ξ), T_k the total move of θ_k during B_i
(eq. 10), clipped at zero (with the penalty active −g·Δθ can turn negative);
F = F + w_i·F^i, F̂ = clip(F, max_F) (eq. 11), with w_1 = ``w_first``
and w_i = ``w_rest`` for i > 1; Θ* = the current weights. The penalty is EWC's
(eq. 6-7, ``transforms.quadratic_anchor_penalty``). Before every batch the
tracker's path is zeroed and its start point set to the current weights.
Every numeric hyperparameter is traced (``ctx.hparams``): a grid over them is one program.

``importance='adam_nu'`` (an option past the paper, whose conclusion proposes it): F^i is the
optimizer's running mean of squared gradients ν (Adam), read from its state after B_i instead of
eq. 10; no path tracker runs. Eq. 11's consolidation and the penalty are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax import transforms
from cljax.engine import Params, TrainState
from cljax.hparams import non_negative, positive
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec
from cljax.strategies.penalty import ADAM_NU, check_penalty, importance_choice, si_after_batch, start_si_batch

HPARAMS = {
    "strength": positive(2e5, "λ of the penalty (eq. 7); 1/(η·max_F) is the largest stable value"),
    "max_f": positive(1e-3, "max_F, the clip of F̂ (eq. 11; Tables 4-5: 0.001)"),
    "xi": positive(1e-3, "ξ, the damping of eq. 10"),
    "w_first": non_negative(1e-4, "w_1 of eq. 11: small, B_1's trajectories start from the initialisation"),
    "w_rest": non_negative(1e-3, "w_i of eq. 11, i > 1"),
    "importance": importance_choice("path"),
}
TRAINING = {"lr": 0.005}  # B_i>1 learning rate


def si(hparams: Mapping[str, Any] | None = None) -> Strategy:
    # Every numeric SI hyperparameter is traced (ctx.hparams); the importance source is static.
    source = "path" if hparams is None else hparams["importance"]

    def transform(base_tx: optax.GradientTransformation) -> optax.GradientTransformation:
        if source == ADAM_NU:  # ν is in the optimizer's state already: no tracker
            return optax.chain(transforms.anchor_penalty_in_state(), base_tx)
        return optax.chain(transforms.anchor_penalty_in_state(), base_tx, transforms.si_path_tracker())

    def init(params: Params) -> dict[str, Any]:
        return {"importance": jax.tree.map(jnp.zeros_like, params)}

    def before_batch(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
        return start_si_batch(state, ctx, source), {}

    def after_batch(state: TrainState, ctx: BatchContext) -> TrainState:
        importance, opt_state = si_after_batch(state, ctx, state.strategy_state["importance"], source)  # eq. 10-11
        return TrainState(state.params, opt_state, {**state.strategy_state, "importance": importance})

    def importance(state: TrainState) -> dict[str, Any]:
        return transforms.importance_report(state.strategy_state["importance"], state.opt_state)

    return Strategy(
        name="si",
        transform=transform,
        init=init,
        before_batch=before_batch,
        after_batch=after_batch,
        importance=importance,
    )


SPEC = StrategySpec(
    si, HPARAMS, TRAINING, doc="Synaptic Intelligence (sec. 2.3, eq. 9-11)", check=lambda v: check_penalty(v, "si")
)
