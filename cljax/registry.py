"""Registration of user strategies, datasets and models, without editing cljax.

A module of your own registers its pieces when it is imported; the command line imports it
with ``--import=my_module`` (repeatable) before the config is read, so ``--config.strategies=mine``
and the config section ``mine`` exist as if they were built in::

    from cljax import Strategy, StrategySpec, positive, register_strategy

    def my_factory(static_hparams):
        return Strategy(name="mine", loss=my_loss)

    register_strategy("mine", StrategySpec(my_factory, {"temperature": positive(2.0, "softmax temperature")}))

``register_dataset(name, loader)``: ``loader(data_dir) -> Dataset`` (split into batches by the
config), or with ``benchmark=True`` ``loader(config) -> Dataset`` carrying a ``protocol``.
``register_model(name, factory)``: ``factory(config, num_classes) -> flax.linen.Module`` that
follows the model contract (``cljax.models.check_model``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

NAME = re.compile(r"[a-z][a-z0-9_]*")


def _check_name(kind: str, name: str, taken: Sequence[str], replace: bool) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} is invalid; it must be lower case letters, digits and _ (a config key)")
    if name in taken and not replace:
        raise ValueError(f"{kind} {name!r} is registered already; pass replace=True to replace it")


def register_strategy(name: str, spec: Any, *, replace: bool = False) -> None:
    """Adds strategy ``name`` (a ``StrategySpec``): ``base_config()`` then has its section
    ``config.<name>`` (its hyperparameters at their defaults) and ``strategies`` accepts it."""
    from cljax import config as config_lib
    from cljax.strategies import STRATEGIES, StrategySpec

    if not isinstance(spec, StrategySpec):
        raise TypeError(f"register_strategy({name!r}, ...) needs a StrategySpec, got {type(spec).__name__}")
    top_level = set(config_lib.base_config().keys()) - set(STRATEGIES)
    if name in top_level:
        raise ValueError(f"strategy name {name!r} is a top-level config field; choose another name")
    _check_name("strategy", name, list(STRATEGIES), replace)
    STRATEGIES[name] = spec


def register_dataset(name: str, loader: Callable[..., Any], *, benchmark: bool = False, replace: bool = False) -> None:
    """Adds dataset ``name``: ``loader(data_dir) -> Dataset`` (a plain dataset the config splits by
    ``classes_per_batch``), or with ``benchmark=True`` ``loader(config) -> Dataset`` with a ``protocol``."""
    from cljax.scenarios import BENCHMARKS, DATASETS

    _check_name("dataset", name, [*DATASETS, *BENCHMARKS], replace)
    DATASETS.pop(name, None)
    BENCHMARKS.pop(name, None)
    (BENCHMARKS if benchmark else DATASETS)[name] = loader


def register_model(name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Adds model ``name``: ``factory(config, num_classes) -> flax.linen.Module`` (the model contract:
    ``__call__(x, train=...)`` returns logits, ``features(x, train)`` the penultimate features, and the
    classifier layer is ``params['params'][config.classifier]``; checked when an experiment is built)."""
    from cljax.models import MODELS

    _check_name("model", name, list(MODELS), replace)
    MODELS[name] = factory


def import_modules(names: Sequence[str]) -> None:
    """Imports user modules (``--import``) so that they can register their pieces; a module that
    cannot be imported is a ValueError with one line naming it and the cause."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # user code: any failure to import it is bad input
            raise ValueError(f"--import={name}: the module could not be imported: {type(e).__name__}: {e}") from None


def registered() -> dict[str, list[str]]:
    """The names of every registered strategy, dataset and model (built-in and user)."""
    from cljax.models import MODELS
    from cljax.scenarios import dataset_names
    from cljax.strategies import STRATEGIES

    return {"strategies": list(STRATEGIES), "datasets": dataset_names(), "models": sorted(MODELS)}
