"""Cumulative: retrain on the union of every batch seen so far (the paper's upper bound, sec. 4.2).

"The model is retrained with the patterns from the current batch and all the
previous batches": by default (``from_scratch=True``) each batch starts again
from the run's initial weights with a fresh optimizer, which is why Tables 4-5
give Cumulative one (epochs, η) pair rather than separate B_1 / B_i>1 values.
``from_scratch=False`` keeps training the current weights on the union instead.
"""

from __future__ import annotations

from cljax.strategies.base import Strategy


def cumulative(hparams=None) -> Strategy:
    from_scratch = True if hparams is None else bool(hparams.get("from_scratch", True))
    return Strategy(name="cumulative", cumulative_data=True, restart_each_batch=from_scratch)
