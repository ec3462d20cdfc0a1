"""Hyperparameter declarations: each strategy lists its own, with default, meaning and check.

A strategy file declares ``HPARAMS = {"strength": positive(2e5, "λ of eq. 7"), ...}`` next
to its factory; the config schema (``cljax.config``) builds each strategy's section from it
and validates every value with the declaration's ``check``. Nothing about a strategy's
hyperparameters is written twice.

*Traced* hyperparameters (floats, and intervals of floats) are not baked into the compiled
program: they reach the strategy's hooks as arrays in ``BatchContext.hparams``, so one
program serves every grid point of a hyper-grid (``--config.ewc.strength=1e3,1e4``). Static
ones (choices, integers that fix shapes, flags) are given to the factory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; the message is one sentence naming field, value and what is allowed."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, a one-line meaning, and how values are checked."""

    default: Any
    doc: str
    check: Callable[[Any], str | None]  # what is wrong with a bad value ("is invalid; it must be ..."), else None
    traced: bool = False  # True: an array in BatchContext.hparams (grid-able); False: given to the factory

    def validate(self, value: Any, field: str) -> None:
        problem = self.check(value)
        if problem is not None:
            raise ConfigError(f"{field}={value!r} {problem}")


def _bounded(lower: float, inclusive: bool) -> Callable[[Any], str | None]:
    allowed = f">= {lower:g}" if inclusive else f"> {lower:g}"

    def check(value: Any) -> str | None:
        ok = _is_number(value) and math.isfinite(value) and (value >= lower if inclusive else value > lower)
        return None if ok else f"is invalid; it must be a finite number {allowed}"

    return check


def positive(default: float, doc: str) -> HParam:
    """A traced float > 0 (λ, max_F, ξ)."""
    return HParam(float(default), doc, _bounded(0.0, inclusive=False), traced=True)


def non_negative(default: float, doc: str) -> HParam:
    """A traced float >= 0 (w_i, a std)."""
    return HParam(float(default), doc, _bounded(0.0, inclusive=True), traced=True)


def positive_int(default: int, doc: str) -> HParam:
    """A static integer > 0 (chunk sizes: they fix array shapes)."""

    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return None if ok else "is invalid; it must be a positive integer"

    return HParam(int(default), doc, check)


def choice(default: str, choices: Sequence[str], doc: str) -> HParam:
    """A static string among ``choices``."""
    allowed = tuple(choices)

    def check(value: Any) -> str | None:
        return None if value in allowed else f"is unknown; allowed: {', '.join(allowed)}"

    return HParam(default, doc, check)


def flag(default: bool, doc: str) -> HParam:
    """A static bool."""
    return HParam(bool(default), doc, lambda v: None if isinstance(v, bool) else "is invalid; it must be True or False")


def interval(default: tuple[float, float], doc: str) -> HParam:
    """A traced pair (lo, hi) of different finite numbers (LwF's map, eq. 5)."""

    def check(value: Any) -> str | None:
        ok = (
            isinstance(value, tuple | list)
            and len(value) == 2
            and all(_is_number(v) and math.isfinite(v) for v in value)
            and value[0] != value[1]
        )
        return None if ok else "is invalid; it must be two different finite numbers (lo, hi)"

    return HParam(tuple(float(v) for v in default), doc, check, traced=True)


def gridable(spec: HParam) -> bool:
    """Whether a list of values may be given for this hyperparameter (a traced scalar)."""
    return spec.traced and _is_number(spec.default)
