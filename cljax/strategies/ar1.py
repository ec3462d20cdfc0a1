"""AR1: CWR+ on the head, SI on the shared weights Θ̄ (paper section 3.3, Algorithm 3).

- The head is CWR+'s (``cwr_plus.py``): tw = 0 before each batch (zero init), no
  regularisation on tw, bias held at zero, mean-shift consolidation cw[j] = tw[j] − avg(tw)
  after each batch; evaluation uses Θ̄ and cw.
- Θ̄ trains on every batch under the SI penalty λ/2·Σ F̂_k(θ_k − Θ*_k)² (eq. 6-7), Θ* = 0 and
  F̂ = 0 before B_1 (lines 3-4: no penalty on B_1). The anchor penalty and the SI path tracker
  are masked to Θ̄ (``transforms.exclude_mask("head")``): importance, anchor and penalty
  never touch the head.
- After each batch (lines 11-14): consolidate cw, Θ* = Θ̄, F^i = path/(T² + ξ) (eq. 10,
  ``transforms.si_batch_importance``), F = F + w_i·F^i, F̂ = clip(F, max_F) (eq. 11,
  ``si.si_consolidate``), w_1 = ``w_first``, w_i = ``w_rest``.
- Maximal head by default (App. A); ``head=expanding`` is an option.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import transforms
from cljax.engine import Params, TrainState
from cljax.models import HEAD
from cljax.strategies import head
from cljax.strategies.base import BatchContext, Data, Strategy
from cljax.strategies.cwr_plus import AVERAGES, consolidate_mean_shift, reset_head
from cljax.strategies.ewc import warn_if_unstable
from cljax.strategies.si import si_consolidate

shared_weights = transforms.exclude_mask(HEAD)  # Θ̄: every parameter outside the head


class AR1State(NamedTuple):
    head: head.HeadState  # consolidated head cw (CWR+)
    importance: Params  # raw SI importance F of Θ̄ (eq. 11); optax.MaskedNode at the head


def init_ar1_state(params: Params) -> AR1State:
    """cw = 0, F = 0 over Θ̄ (Alg. 3 lines 1, 4)."""
    zeros = jax.tree.map(
        lambda keep, p: jnp.zeros_like(p) if keep else optax.MaskedNode(), shared_weights(params), params
    )
    return AR1State(head.init_head_state(params), zeros)


def without_head(tree: Params) -> Params:
    """A params-shaped tree restricted to Θ̄ (its head entry dropped): what AR1's importance covers."""
    return {**tree, "params": {k: v for k, v in tree["params"].items() if k != HEAD}}


def ar1(hparams) -> Strategy:
    """hparams: ``strength`` (λ), ``max_f``, ``xi`` (ξ), ``w_first``, ``w_rest`` (eq. 11's w_i), ``avg``."""
    strength, max_f, xi = float(hparams.strength), float(hparams.max_f), float(hparams.xi)
    w_first, w_rest, avg = float(hparams.w_first), float(hparams.w_rest), hparams.avg
    if avg not in AVERAGES:
        raise ValueError(f"ar1.avg={avg!r} is unknown; allowed: {', '.join(AVERAGES)}")
    warn_if_unstable(float(hparams.lr), strength, max_f, "ar1")

    def transform(base_tx: optax.GradientTransformation) -> optax.GradientTransformation:
        # Penalty first (its gradient goes through the base optimizer), tracker last (it sees the
        # applied update Δθ); both on Θ̄ only. The head bias gets no update (CWR+).
        return optax.chain(
            transforms.quadratic_anchor_penalty(strength, mask=shared_weights),
            head.freeze_head_bias(base_tx),
            transforms.si_path_tracker(mask=shared_weights),
        )

    def before_batch(state: TrainState, ctx: BatchContext) -> tuple[TrainState, Data]:
        state = state._replace(opt_state=transforms.reset_si_path(state.opt_state, state.params))
        return reset_head(state, ctx), ctx.data  # Alg. 3 line 7: tw = 0

    def after_batch(state: TrainState, ctx: BatchContext) -> TrainState:
        consolidated = consolidate_mean_shift(state.strategy_state.head, state.params, ctx, avg)  # lines 11-12
        batch_importance = transforms.si_batch_importance(
            transforms.si_path_state(state.opt_state), state.params, xi
        )  # eq. 10
        weight = jnp.float32(w_first if ctx.index == 0 else w_rest)
        importance, f_hat = si_consolidate(state.strategy_state.importance, batch_importance, weight, max_f)  # eq. 11
        opt_state = transforms.replace_anchor_state(state.opt_state, anchor=state.params, importance=f_hat)  # line 13
        return TrainState(state.params, opt_state, AR1State(consolidated, importance))

    def eval_params(state: TrainState) -> Params:
        return head.with_head(state.params, state.strategy_state.head.cw)  # line 15: Θ̄ and cw

    def importance(state: TrainState) -> dict[str, Any]:
        report = transforms.importance_report(state.strategy_state.importance, state.opt_state, max_f)
        return {**report, "F": without_head(report["F"]), "F_hat": without_head(report["F_hat"])}

    return Strategy(
        name="ar1",
        transform=transform,
        init=init_ar1_state,
        before_batch=before_batch,
        after_batch=after_batch,
        eval_params=eval_params,
        importance=importance,
    )
