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
As in CWR, Θ̄ learns on B_1 only (``transforms.freeze_body``) and each batch starts with a fresh
optimizer state.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import optax

from cljax import transforms
from cljax.engine import TrainState
from cljax.hparams import choice
from cljax.models import HEAD
from cljax.strategies import head
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec

HPARAMS = {
    "avg": choice("batch", head.AVERAGES, "mean-shift average: batch (authors' code) | all (every head weight)"),
}
TRAINING = {"epochs": 20, "lr": 0.02}


def transform(base_tx: optax.GradientTransformation, path: str = HEAD) -> optax.GradientTransformation:
    return optax.chain(head.freeze_head_bias(base_tx, path), transforms.freeze_body(path))


def before_batch(state: TrainState, ctx: BatchContext, path: str = HEAD) -> tuple[TrainState, Data]:
    params = head.reset_head(state.params, state.strategy_state, ctx.class_counts, path)  # Alg. 2 line 5
    return TrainState(params, head.fresh_optimizer(params, ctx.tx, ctx.index), state.strategy_state), {}


def after_batch(state: TrainState, ctx: BatchContext, avg: str, path: str = HEAD) -> TrainState:
    consolidated = head.consolidate_mean_shift(state.strategy_state, state.params, ctx.class_counts, avg, path)
    return state._replace(strategy_state=consolidated)  # Alg. 2 line 10


def cwr_plus(hparams: Mapping[str, Any] | None = None, classifier: str = HEAD) -> Strategy:
    avg = "batch" if hparams is None else hparams["avg"]
    on = functools.partial
    return Strategy(
        name="cwr_plus",
        transform=on(transform, path=classifier),
        init=on(head.init_head_state, path=classifier),
        before_batch=on(before_batch, path=classifier),
        after_batch=on(after_batch, avg=avg, path=classifier),
        eval_params=on(head.eval_with_cw, path=classifier),
    )


SPEC = StrategySpec(cwr_plus, HPARAMS, TRAINING, doc="CWR with mean-shift and zero init (sec. 3.2, Alg. 2)")
