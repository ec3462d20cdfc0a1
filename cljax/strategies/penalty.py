"""Pieces shared by the strategies with the quadratic anchor penalty (EWC, SI, AR1; eq. 6-7, 10-11)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax import transforms
from cljax.engine import Params, TrainState
from cljax.hparams import ConfigError, choice
from cljax.strategies.base import BatchContext

ADAM_NU = "adam_nu"


def importance_choice(default: str) -> Any:
    """The ``importance`` hyperparameter: the paper's (``default``) or the optimizer's ν."""
    return choice(
        default,
        (default, ADAM_NU),
        f"F^i: {default} (the paper's) | adam_nu: the optimizer's running mean of squared gradients "
        "(Adam's ν, read from its state at no extra cost; the paper's conclusion, future work; needs optimizer=adam)",
    )


def check_importance(values: Mapping[str, Any], name: str) -> None:
    """``importance=adam_nu`` needs an optimizer that keeps ν."""
    if values.get("importance") == ADAM_NU and values.get("optimizer") != "adam":
        raise ConfigError(
            f"{name}.importance='adam_nu' needs optimizer='adam' (got optimizer={values.get('optimizer')!r}): "
            "SGD keeps no running mean of squared gradients"
        )


def check_penalty(values: Mapping[str, Any], name: str) -> None:
    """The checks of a penalty strategy with the ``importance`` option (SI, EWC, AR1)."""
    check_importance(values, name)
    warn_if_unstable(values, name)


def warn_if_unstable(values: Mapping[str, Any], name: str) -> None:
    """Warns when η·λ·max_F > 1 (η the B_i>1 learning rate): the pull toward Θ* can overshoot
    (eq. 7). Table 4's own EWC values give about 1.2, so this is a warning, not an error."""
    lr, strength, max_f = float(values["lr"]), float(values["strength"]), float(values["max_f"])
    product = lr * strength * max_f
    if product > 1.0 + 1e-9:  # not for products that are 1 up to float rounding (2e-5 · 5e7 · 1e-3)
        warnings.warn(
            f"{name}: learning rate η={lr:g} · strength λ={strength:g} · max_f={max_f:g} = {product:.3g} > 1; "
            "the penalty step can overshoot the anchor (eq. 7)",
            RuntimeWarning,
            stacklevel=2,
        )


def set_strength(state: TrainState, ctx: BatchContext) -> TrainState:
    """Writes this run's λ (a traced hyperparameter) into the penalty's state."""
    return state._replace(opt_state=transforms.set_hyperparams(state.opt_state, strength=ctx.hparams["strength"]))


def si_batch_weight(ctx: BatchContext) -> jax.Array:
    """w_1 for B_1, w_i after (eq. 11)."""
    return jnp.where(ctx.index == 0, ctx.hparams["w_first"], ctx.hparams["w_rest"])


@jax.jit
def si_consolidate(importance: Params, batch_importance: Params, weight, max_f) -> tuple[Params, Params]:
    """Eq. 11: F = F + w_i·F^i; F̂ = clip(F, max_F). Returns (F, F̂); masked leaves stay masked."""
    importance = transforms.map_unmasked(lambda f, fi: (f + weight * fi).astype(f.dtype), importance, batch_importance)
    f_hat = transforms.map_unmasked(lambda f: jnp.minimum(f, max_f).astype(f.dtype), importance)
    return importance, f_hat


def adam_nu_importance(opt_state: Any, template: Params) -> Params:
    """F^i = ν, the optimizer's second moment (``transforms.second_moment``), on the leaves of
    ``template`` (``MaskedNode`` leaves stay masked: AR1's head), in their dtypes."""
    nu = transforms.second_moment(opt_state)
    return transforms.map_unmasked(lambda t, v: jnp.asarray(v, t.dtype), template, nu)


def si_after_batch(
    state: TrainState, ctx: BatchContext, importance: Params, source: str = "path"
) -> tuple[Params, Any]:
    """SI's end of batch (eq. 10-11), on whatever ``importance`` covers: returns the new raw
    importance F and the optimizer state with Θ* = the current weights and F̂ in the penalty.
    ``source='path'``: F^i from the path tracker (eq. 10); ``'adam_nu'``: F^i = ν."""
    if source == ADAM_NU:
        batch_importance = adam_nu_importance(state.opt_state, importance)
    else:
        tracker = transforms.si_path_state(state.opt_state)
        batch_importance = transforms.si_batch_importance(tracker, state.params, ctx.hparams["xi"])  # eq. 10
    importance, f_hat = si_consolidate(importance, batch_importance, si_batch_weight(ctx), ctx.hparams["max_f"])
    opt_state = transforms.replace_anchor_state(state.opt_state, anchor=state.params, importance=f_hat)
    return importance, opt_state


def start_si_batch(state: TrainState, ctx: BatchContext, source: str = "path") -> TrainState:
    """Before B_i: zero the SI path, start it at the current weights (no tracker with
    ``source='adam_nu'``), and set λ."""
    if source != ADAM_NU:
        state = state._replace(opt_state=transforms.reset_si_path(state.opt_state, state.params))
    return set_strength(state, ctx)
