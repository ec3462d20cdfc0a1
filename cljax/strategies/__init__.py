"""Strategy registry: name -> factory(hparams: ConfigDict) -> Strategy."""

from __future__ import annotations

from collections.abc import Callable

from cljax.strategies.ar1 import ar1
from cljax.strategies.base import BatchContext, Strategy
from cljax.strategies.cumulative import cumulative
from cljax.strategies.cwr import cwr
from cljax.strategies.cwr_plus import cwr_plus
from cljax.strategies.ewc import ewc
from cljax.strategies.lwf import lwf
from cljax.strategies.naive import naive
from cljax.strategies.si import si

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "naive": naive,
    "cumulative": cumulative,
    "lwf": lwf,
    "ewc": ewc,
    "si": si,
    "cwr": cwr,
    "cwr_plus": cwr_plus,
    "ar1": ar1,
}


def make_strategy(name: str, hparams=None) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](hparams)


__all__ = ["STRATEGIES", "BatchContext", "Strategy", "make_strategy"]
