"""Strategy registry: name -> ``StrategySpec`` (factory and hyperparameters, one file each)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from cljax.strategies import ar1, cumulative, cwr, cwr_plus, ewc, lwf, naive, si
from cljax.strategies.base import BatchContext, Strategy, StrategySpec

STRATEGIES: dict[str, StrategySpec] = {
    "naive": naive.SPEC,
    "cumulative": cumulative.SPEC,
    "lwf": lwf.SPEC,
    "ewc": ewc.SPEC,
    "si": si.SPEC,
    "cwr": cwr.SPEC,
    "cwr_plus": cwr_plus.SPEC,
    "ar1": ar1.SPEC,
}


def strategy_spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def make_strategy(name: str, hparams: Mapping[str, Any] | None = None, classifier: str = "head") -> Strategy:
    """The strategy ``name`` built from its static hyperparameters (defaults where absent).
    ``classifier`` is the path of the model's classifier layer (``config.classifier``), given to
    factories that take a ``classifier`` argument (those that touch the head: CWR, CWR+, AR1)."""
    spec = strategy_spec(name)
    values = {k: p.default for k, p in spec.hparams.items()}
    values.update(hparams or {})
    if "classifier" in inspect.signature(spec.factory).parameters:
        return spec.factory(spec.static_hparams(values), classifier=classifier)
    return spec.factory(spec.static_hparams(values))


def default_hparams(name: str) -> dict[str, Any]:
    """Every hyperparameter of strategy ``name`` at its default."""
    return {k: p.default for k, p in strategy_spec(name).hparams.items()}


__all__ = [
    "STRATEGIES",
    "BatchContext",
    "Strategy",
    "StrategySpec",
    "default_hparams",
    "make_strategy",
    "strategy_spec",
]
