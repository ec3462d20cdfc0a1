"""Naive: plain fine-tuning on each batch; early stopping (few epochs) is its only defence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cljax.strategies.base import Strategy, StrategySpec


def naive(hparams: Mapping[str, Any] | None = None) -> Strategy:
    del hparams
    return Strategy(name="naive")


SPEC = StrategySpec(naive, doc="fine-tuning on each batch (lower bound)")
