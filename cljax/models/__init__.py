"""Flax linen classifiers. Every model's last layer is named ``head`` (strategies find it by name)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from cljax.models.cifarnet import CifarNet
from cljax.models.mlp import MLP

HEAD = "head"

# name -> factory(config, num_classes) -> nn.Module. Later models register here.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda config, num_classes: MLP(num_classes, tuple(config.hidden_sizes)),
    "cifarnet": lambda config, num_classes: CifarNet(num_classes),
}


def build_model(config, num_classes: int) -> nn.Module:
    if config.model not in MODELS:
        raise ValueError(f"model={config.model!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[config.model](config, num_classes)


__all__ = ["HEAD", "MODELS", "CifarNet", "MLP", "build_model"]
