"""Strategy registry: name -> ``StrategySpec`` (factory and hyperparameters, one file each).

A factory receives its static hyperparameters; strategies whose state is sized by the stream
(the rehearsal memories of sec. 4.4) also read ``hparams["stream"]``, a ``StreamShape`` (input
shape and dtype, classes, batches, largest traced values over the grid points) that
``StrategyJob.build`` passes through ``make_strategy(..., stream=...)``; the others ignore it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from cljax.hparams import gridable
from cljax.strategies import ar1, ar1_star, cumulative, cwr, cwr_plus, ewc, gem, icarl, lwf, naive, rehe, si
from cljax.strategies.base import BatchContext, Strategy, StrategySpec
from cljax.strategies.memory import STREAM, StreamShape

STRATEGIES: dict[str, StrategySpec] = {
    "naive": naive.SPEC,
    "cumulative": cumulative.SPEC,
    "lwf": lwf.SPEC,
    "ewc": ewc.SPEC,
    "si": si.SPEC,
    "cwr": cwr.SPEC,
    "cwr_plus": cwr_plus.SPEC,
    "ar1": ar1.SPEC,
    "rehe": rehe.SPEC,
    "gem": gem.SPEC,
    "icarl": icarl.SPEC,
    "ar1_star": ar1_star.SPEC,
}


def strategy_spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def make_strategy(
    name: str,
    hparams: Mapping[str, Any] | None = None,
    stream: StreamShape | None = None,
    classifier: str = "head",
    model: Any = None,
) -> Strategy:
    """The strategy ``name`` built from its static hyperparameters (defaults where absent); for
    the strategies that size their state by it, the ``stream`` (under ``hparams["stream"]``).
    ``classifier`` is the path of the model's classifier layer (``config.classifier``), given to
    factories that take a ``classifier`` argument (those that touch the head: CWR, CWR+, AR1);
    ``model`` (the Flax module) to those that take a ``model`` argument (AR1* splits it at a layer)."""
    spec = strategy_spec(name)
    values = {k: p.default for k, p in spec.hparams.items()}
    values.update(hparams or {})
    static = spec.static_hparams(values)
    if stream is not None:  # traced values not given by a grid: this strategy's own
        own = {k: float(values[k]) for k in spec.traced_names() if gridable(spec.hparams[k])}
        static[STREAM] = dataclasses.replace(stream, largest={**own, **stream.largest})
    parameters = inspect.signature(spec.factory).parameters
    extra = {"classifier": classifier} if "classifier" in parameters else {}
    if "model" in parameters:
        extra["model"] = model
    return spec.factory(static, **extra)


def default_hparams(name: str) -> dict[str, Any]:
    """Every hyperparameter of strategy ``name`` at its default."""
    return {k: p.default for k, p in strategy_spec(name).hparams.items()}


__all__ = [
    "STRATEGIES",
    "BatchContext",
    "Strategy",
    "StrategySpec",
    "StreamShape",
    "default_hparams",
    "make_strategy",
    "strategy_spec",
]
