"""Flax linen classifiers: a body (``features``) and a last layer named ``head``.

Strategies find the classifier by its name (``HEAD``), never by position.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from cljax.models.cifarnet import CifarNetBody
from cljax.models.classifier import Classifier
from cljax.models.mlp import MLPBody

HEAD = "head"

# name -> factory(config, num_classes) -> nn.Module. Later models register here.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda config, num_classes: Classifier(MLPBody(tuple(config.hidden_sizes)), num_classes),
    "cifarnet": lambda config, num_classes: Classifier(CifarNetBody(), num_classes),
}


def build_model(config, num_classes: int) -> nn.Module:
    if config.model not in MODELS:
        raise ValueError(f"model={config.model!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[config.model](config, num_classes)


__all__ = ["HEAD", "MODELS", "CifarNetBody", "Classifier", "MLPBody", "build_model"]
