"""Naive: plain fine-tuning on each batch; early stopping (few epochs) is its only defence."""

from __future__ import annotations

from cljax.strategies.base import Strategy


def naive(hparams=None) -> Strategy:
    del hparams
    return Strategy(name="naive")
