"""The paper's hyperparameters (App. C, Table 4: CORe50; App. D, Table 5: iCIFAR-100) as config values.

``TABLE_4[strategy][model]`` and ``TABLE_5[strategy]`` map each table cell to
the field of the strategy's config section (cljax.config.strategy_section)
that carries it:

- "B_1: epochs, η" -> ``epochs_first``, ``lr_first``; "B_i, i > 1" -> ``epochs``, ``lr``
  (Cumulative's single "epochs, η" row -> both);
- "Head" -> ``head`` (maximal | expanding);
- λ -> ``strength``; max_F -> ``max_f``; ξ -> ``xi``; w_1, w_i -> ``w_first``, ``w_rest``;
- LwF "map [a...b] -> [c...d]" -> ``map_from=(a, b)``, ``map_to=(c, d)`` (eq. 5).

configs/core50_nc.py, configs/icifar100.py and configs/cifar_split.py apply
them with ``apply_table``; tests/test_paper_configs.py checks every cell
against an independent transcription.
"""

from __future__ import annotations

from typing import Any

from cljax.config import ConfigError, update_section

Cells = dict[str, Any]


def _train(epochs_first: int, lr_first: float, epochs: int, lr: float) -> Cells:
    return {"epochs_first": epochs_first, "lr_first": lr_first, "epochs": epochs, "lr": lr}


_LWF_MAP_CORE50 = {"map_from": (0.66, 0.9), "map_to": (0.45, 0.85)}

# App. C, Table 4: CaffeNet and GoogLeNet on CORe50 (SIT-NC).
TABLE_4: dict[str, dict[str, Cells]] = {
    "cumulative": {
        "caffenet": _train(4, 0.0025, 4, 0.0025),
        "googlenet": _train(4, 0.0025, 4, 0.0025),
    },
    "naive": {
        "caffenet": {"head": "maximal", **_train(2, 0.0003, 2, 0.0003)},
        "googlenet": {"head": "maximal", **_train(4, 0.005, 2, 0.0003)},
    },
    "lwf": {
        "caffenet": {"head": "expanding", **_LWF_MAP_CORE50, **_train(2, 0.0003, 2, 0.0002)},
        "googlenet": {"head": "expanding", **_LWF_MAP_CORE50, **_train(4, 0.0003, 2, 0.0002)},
    },
    "ewc": {
        "caffenet": {"head": "maximal", "max_f": 0.001, "strength": 5.0e7, **_train(2, 0.001, 2, 0.000025)},
        "googlenet": {"head": "maximal", "max_f": 0.001, "strength": 3.4e7, **_train(4, 0.002, 2, 0.000035)},
    },
    "si": {
        "caffenet": {
            "head": "maximal",
            "xi": 1e-7,
            "w_first": 0.00001,
            "w_rest": 0.005,
            "max_f": 0.001,
            "strength": 5.0e7,
            **_train(2, 0.001, 2, 0.00002),
        },
        "googlenet": {
            "head": "maximal",
            "xi": 1e-7,
            "w_first": 0.00001,
            "w_rest": 0.005,
            "max_f": 0.001,
            "strength": 3.4e7,
            **_train(4, 0.002, 2, 0.000035),
        },
    },
    "cwr": {
        "caffenet": {"head": "maximal", "w_first": 1.25, "w_rest": 1.0, **_train(2, 0.0003, 2, 0.0003)},
        "googlenet": {"head": "maximal", "w_first": 1.0, "w_rest": 1.0, **_train(4, 0.0003, 2, 0.0003)},
    },
    "cwr_plus": {
        "caffenet": {"head": "maximal", **_train(2, 0.0003, 2, 0.0003)},
        "googlenet": {"head": "maximal", **_train(4, 0.0003, 2, 0.0003)},
    },
    "ar1": {
        "caffenet": {
            "head": "maximal",
            "xi": 1e-7,
            "w_first": 0.0015,
            "w_rest": 0.0015,
            "max_f": 0.001,
            "strength": 8.0e5,
            **_train(2, 0.0003, 2, 0.0003),
        },
        "googlenet": {
            "head": "maximal",
            "xi": 1e-7,
            "w_first": 0.0015,
            "w_rest": 0.0015,
            "max_f": 0.001,
            "strength": 8.0e5,
            **_train(4, 0.0003, 2, 0.0003),
        },
    },
}

# App. D, Table 5: CifarNet on iCIFAR-100.
TABLE_5: dict[str, Cells] = {
    "cumulative": _train(180, 0.005, 180, 0.005),
    "naive": {"head": "maximal", **_train(60, 0.001, 60, 0.001)},
    "lwf": {"head": "expanding", "map_from": (0.5, 0.9), "map_to": (0.45, 0.85), **_train(20, 0.001, 20, 0.001)},
    "ewc": {"head": "maximal", "max_f": 0.001, "strength": 8.0e7, **_train(60, 0.001, 25, 0.00002)},
    "si": {
        "head": "maximal",
        "xi": 1e-7,
        "w_first": 0.00001,
        "w_rest": 0.00175,
        "max_f": 0.001,
        "strength": 6.0e7,
        **_train(60, 0.0005, 60, 0.00002),
    },
    "cwr": {"head": "maximal", "w_first": 1.0, "w_rest": 1.0, **_train(60, 0.001, 60, 0.001)},
    "cwr_plus": {"head": "maximal", **_train(60, 0.001, 60, 0.001)},
    "ar1": {
        "head": "maximal",
        "xi": 1e-7,
        "w_first": 0.00015,
        "w_rest": 0.000005,
        "max_f": 0.001,
        "strength": 4.0e5,
        **_train(60, 0.001, 60, 0.001),
    },
}

STRATEGIES = tuple(TABLE_5)  # the paper's eight, in its table order


def apply_table(config, table: dict[str, Cells]) -> None:
    """Writes every strategy's cells into its config section (strategies missing from ``table`` are left alone)."""
    for strategy, cells in table.items():
        update_section(config, strategy, **cells)


def parse_strategies(arg: str) -> str:
    """A config argument's strategy part: one name or ``all`` -> the ``strategies`` field value."""
    if arg == "all":
        return ",".join(STRATEGIES)
    if arg not in STRATEGIES:
        raise ConfigError(f"strategy={arg!r} is not in the paper's tables; allowed: all, {', '.join(STRATEGIES)}")
    return arg
