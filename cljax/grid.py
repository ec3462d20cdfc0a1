"""Hyper-grids: lists of values for traced hyperparameters, trained together in one program.

``--config.ewc.strength=1e3,1e4,1e5`` (a comma-separated list on a grid-able field) is
shorthand for ``--config.grid='ewc.strength=1e3,1e4,1e5'``; several axes multiply
(``'ewc.strength=1e3,1e4; lr=0.01,0.02'``: 4 points). Grid-able fields are a strategy's
traced scalar hyperparameters (``cljax.hparams``) and the training fields ``lr_first``,
``lr``, ``epochs_first`` and ``epochs``, top-level or in a strategy's section. A top-level
axis applies to the strategies whose section does not set that field.

Every grid point of a strategy trains next to its runs in the same vmapped program (the
values are traced), and is recorded in results.json as its own entry,
``ewc[strength=1000]``, with its values under ``"hparams"``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cljax.hparams import ConfigError, gridable

# Training fields that may take a list of values; they are traced in the compiled program.
GRID_TRAINING_FIELDS = ("lr_first", "lr", "epochs_first", "epochs")
INT_TRAINING_FIELDS = ("epochs_first", "epochs")


@dataclasses.dataclass(frozen=True)
class GridAxis:
    field: str  # "lr" (top level) or "<strategy>.<field>"
    values: tuple[Any, ...]

    @property
    def strategy(self) -> str | None:
        return self.field.split(".")[0] if "." in self.field else None

    @property
    def name(self) -> str:
        return self.field.split(".")[-1]


def gridable_field(path: str, strategies: Mapping[str, Any]) -> bool:
    """Whether ``path`` ("lr", "ewc.strength", ...) may take a list of values."""
    parts = path.split(".")
    if len(parts) == 1:
        return parts[0] in GRID_TRAINING_FIELDS
    if len(parts) != 2 or parts[0] not in strategies:
        return False
    strategy, field = parts
    spec = strategies[strategy].hparams.get(field)
    return field in GRID_TRAINING_FIELDS or (spec is not None and gridable(spec))


def _number(text: str, integer: bool, field: str) -> int | float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"grid: {field}={text!r} is invalid; each value must be {kind}") from None


def parse_grid(text: str, strategies: Mapping[str, Any]) -> list[GridAxis]:
    """``'ewc.strength=1e3,1e4; lr=0.01'`` -> axes (``;`` or whitespace separate them)."""
    axes: list[GridAxis] = []
    for item in [t for t in re.split(r"[;\s]+", text.strip()) if t]:
        field, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"grid: {item!r} is invalid; write field=v1,v2,... (e.g. ewc.strength=1e3,1e4)")
        if not gridable_field(field, strategies):
            raise ConfigError(
                f"grid: {field!r} cannot take a list of values; grid-able fields are "
                f"{', '.join(GRID_TRAINING_FIELDS)} and a strategy's numeric hyperparameters (e.g. ewc.strength)"
            )
        if any(axis.field == field for axis in axes):
            raise ConfigError(f"grid: {field!r} is given twice")
        integer = field.split(".")[-1] in INT_TRAINING_FIELDS
        parsed = tuple(_number(v, integer, field) for v in values.split(",") if v.strip())
        if len(set(parsed)) != len(parsed):
            raise ConfigError(f"grid: {field}={values!r} repeats a value")
        axes.append(GridAxis(field, parsed))
    return axes


def axes_of(strategy: str, axes: Sequence[GridAxis], section: Mapping[str, Any] | None) -> list[GridAxis]:
    """The axes that apply to ``strategy``: its own, and top-level ones its section does not override."""
    own = [a for a in axes if a.strategy == strategy]
    own_names = {a.name for a in own}
    top = [
        a
        for a in axes
        if a.strategy is None and a.name not in own_names and (section is None or section.get(a.name) is None)
    ]
    return top + own


def grid_points(axes: Sequence[GridAxis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, as {field name: value}; [{}] without axes."""
    return [
        dict(zip([a.name for a in axes], combo, strict=True)) for combo in itertools.product(*[a.values for a in axes])
    ]


def entry_name(strategy: str, point: Mapping[str, Any]) -> str:
    """results.json key of a grid point: ``ewc`` without a grid, ``ewc[strength=1000,lr=0.01]`` with one."""
    if not point:
        return strategy
    return f"{strategy}[{','.join(f'{k}={v:g}' for k, v in point.items())}]"


def split_grid_flags(argv: Sequence[str], strategies: Mapping[str, Any]) -> list[str]:
    """Rewrites ``--config.<field>=v1,v2,...`` on grid-able fields into one ``--config.grid=...``
    flag (appended to a ``--config.grid`` given explicitly); other arguments are unchanged."""
    kept, axes = [], []
    for arg in argv:
        match = re.fullmatch(r"--config\.([\w.]+)=(.*,.*)", arg)
        if match and match.group(1) != "grid" and gridable_field(match.group(1), strategies):
            axes.append(f"{match.group(1)}={match.group(2)}")
        else:
            kept.append(arg)
    if not axes:
        return kept
    explicit = [a for a in kept if a.startswith("--config.grid=")]
    kept = [a for a in kept if not a.startswith("--config.grid=")]
    given = [a.split("=", 1)[1] for a in explicit]
    return [*kept, "--config.grid=" + ";".join(given + axes)]
