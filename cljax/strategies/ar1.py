"""AR1: CWR+ on the head, SI on the shared weights Θ̄ (paper section 3.3, Algorithm 3).

- The head is CWR+'s (``cwr_plus.py``): tw = 0 before each batch (zero init), no
  regularisation on tw, bias held at zero, the head's optimizer state (momentum) reset with tw,
  mean-shift consolidation cw[j] = tw[j] − avg(tw)
  after each batch; evaluation uses Θ̄ and cw.
- Θ̄ trains on every batch under the SI penalty λ/2·Σ F̂_k(θ_k − Θ*_k)² (eq. 6-7), Θ* = 0 and
  F̂ = 0 before B_1 (lines 3-4: no penalty on B_1). The anchor penalty and the SI path tracker
  are masked to Θ̄ (``transforms.exclude_path(config.classifier)``): importance, anchor and penalty
  never touch the head.
- After each batch (lines 11-14): consolidate cw, Θ* = Θ̄, F^i = path/(T² + ξ) (eq. 10),
  F = F + w_i·F^i, F̂ = clip(F, max_F) (eq. 11), w_1 = ``w_first``, w_i = ``w_rest``.
- Maximal head by default (App. A); ``head=expanding`` is an option.
- ``importance='adam_nu'`` (past the paper, its conclusion's proposal): F^i = the optimizer's
  ν (Adam) on Θ̄ instead of eq. 10, as SI's option (``si.py``); no path tracker runs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import transforms
from cljax.engine import Params, TrainState
from cljax.hparams import choice, non_negative, positive
from cljax.models import HEAD
from cljax.strategies import head
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec
from cljax.strategies.penalty import ADAM_NU, check_penalty, importance_choice, si_after_batch, start_si_batch

HPARAMS = {
    "strength": positive(5e4, "λ of the SI penalty on Θ̄ (eq. 7); 1/(η·max_F) is the largest stable value"),
    "max_f": positive(1e-3, "max_F (eq. 11; Tables 4-5: 0.001)"),
    "xi": positive(1e-3, "ξ of eq. 10"),
    "w_first": non_negative(2e-2, "w_1 of eq. 11 (Table 4: 0.0015; larger here: B_1's features are the ones to keep)"),
    "w_rest": non_negative(2e-2, "w_i of eq. 11, i > 1 (Table 4: 0.0015)"),
    "avg": choice("batch", head.AVERAGES, "mean-shift average, as cwr_plus.avg"),
    "importance": importance_choice("path"),
}
TRAINING = {"epochs": 20, "lr": 0.02}  # B_i>1, as CWR+


class AR1State(NamedTuple):
    head: head.HeadState  # consolidated head cw (CWR+)
    importance: Params  # raw SI importance F of Θ̄ (eq. 11); optax.MaskedNode at the head


def init_ar1_state(params: Params, path: str = HEAD) -> AR1State:
    """cw = 0, F = 0 over Θ̄ (Alg. 3 lines 1, 4)."""
    shared = transforms.exclude_path(path)(params)
    zeros = jax.tree.map(lambda keep, p: jnp.zeros_like(p) if keep else optax.MaskedNode(), shared, params)
    return AR1State(head.init_head_state(params, path), zeros)


def without_head(tree: Params, path: str = HEAD) -> Params:
    """A params-shaped tree restricted to Θ̄ (the classifier's entry dropped): what AR1's importance covers."""

    def drop(node: Params, keys: tuple[str, ...]) -> Params:
        if len(keys) == 1:
            return {k: v for k, v in node.items() if k != keys[0]}
        child = drop(node[keys[0]], keys[1:])
        rest = {k: v for k, v in node.items() if k != keys[0]}
        return {**rest, keys[0]: child} if child else rest  # no empty module left behind

    return {**tree, "params": drop(tree["params"], transforms.path_keys(path))}


def transform(
    base_tx: optax.GradientTransformation, source: str = "path", path: str = HEAD
) -> optax.GradientTransformation:
    # Penalty first (its gradient goes through the base optimizer), tracker last (it sees the
    # applied update Δθ); both on Θ̄ only (every parameter outside the classifier). The head
    # bias gets no update (CWR+). With importance=adam_nu the optimizer's ν is the importance: no tracker.
    shared_weights = transforms.exclude_path(path)
    parts = [transforms.anchor_penalty_in_state(mask=shared_weights), head.freeze_head_bias(base_tx, path)]
    if source != ADAM_NU:
        parts.append(transforms.si_path_tracker(mask=shared_weights))
    return optax.chain(*parts)


def before_batch(
    state: TrainState, ctx: BatchContext, source: str = "path", path: str = HEAD
) -> tuple[TrainState, Data]:
    state = start_si_batch(state, ctx, source)
    params = head.reset_head(state.params, state.strategy_state.head, ctx.class_counts, path)  # line 7: tw = 0
    # tw restarts from zero, so its optimizer state (momentum) restarts too: stale momentum from
    # the previous batch's head would move tw's first steps (CWR+ starts each batch's fit fresh).
    opt_state = head.reset_head_optimizer(state.opt_state, ctx.tx, params, path)
    return state._replace(params=params, opt_state=opt_state), {}


def after_batch(state: TrainState, ctx: BatchContext, avg: str, source: str = "path", path: str = HEAD) -> TrainState:
    consolidated = head.consolidate_mean_shift(state.strategy_state.head, state.params, ctx.class_counts, avg, path)
    importance, opt_state = si_after_batch(state, ctx, state.strategy_state.importance, source)  # lines 13-14
    return TrainState(state.params, opt_state, AR1State(consolidated, importance))


def importance(state: TrainState, path: str = HEAD) -> dict[str, Any]:
    report = transforms.importance_report(state.strategy_state.importance, state.opt_state)
    return {"F": without_head(report["F"], path), "F_hat": without_head(report["F_hat"], path)}


def ar1(hparams: Mapping[str, Any] | None = None, classifier: str = HEAD) -> Strategy:
    avg = "batch" if hparams is None else hparams["avg"]
    source = "path" if hparams is None else hparams["importance"]
    on = functools.partial
    return Strategy(
        name="ar1",
        transform=on(transform, source=source, path=classifier),
        init=on(init_ar1_state, path=classifier),
        before_batch=on(before_batch, source=source, path=classifier),
        after_batch=on(after_batch, avg=avg, source=source, path=classifier),
        eval_params=on(head.eval_with_cw, path=classifier),
        importance=on(importance, path=classifier),
    )


SPEC = StrategySpec(
    ar1, HPARAMS, TRAINING, doc="CWR+ head and SI on Θ̄ (sec. 3.3, Alg. 3)", check=lambda v: check_penalty(v, "ar1")
)
