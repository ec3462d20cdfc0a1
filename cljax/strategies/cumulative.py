"""Cumulative: retrain on the union of every batch seen so far (the paper's upper bound, sec. 4.2).

The model keeps training from its current weights, as in the paper's Caffe
runs; the experiment loop hands it B_1 ∪ ... ∪ B_i.
"""

from __future__ import annotations

from cljax.strategies.base import Strategy


def cumulative(hparams=None) -> Strategy:
    del hparams
    return Strategy(name="cumulative", cumulative_data=True)
