"""Flax linen classifiers: a body (``features``) and a last layer named ``head``.

Strategies find the classifier by its name (``HEAD``), never by position.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from cljax.models.caffenet import CaffeNetBody
from cljax.models.cifarnet import CifarNetBody
from cljax.models.classifier import Classifier
from cljax.models.googlenet import GoogLeNet
from cljax.models.mlp import MLPBody
from cljax.models.nin import NiNBody

HEAD = "head"

# name -> factory(config, num_classes) -> nn.Module. Later models register here.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda config, num_classes: Classifier(MLPBody(tuple(config.hidden_sizes)), num_classes),
    "cifarnet": lambda config, num_classes: Classifier(CifarNetBody(), num_classes),
    # The paper's CORe50 models at 128x128 (App. B, Table 3; NiN: Table 2).
    "caffenet": lambda config, num_classes: Classifier(CaffeNetBody(lrn=config.lrn), num_classes),
    "googlenet": lambda config, num_classes: GoogLeNet(
        num_classes, lrn=config.lrn, aux_loss_weight=config.aux_loss_weight
    ),
    "nin": lambda config, num_classes: Classifier(NiNBody(), num_classes),
}


def build_model(config, num_classes: int) -> nn.Module:
    if config.model not in MODELS:
        raise ValueError(f"model={config.model!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[config.model](config, num_classes)


__all__ = [
    "HEAD",
    "MODELS",
    "CaffeNetBody",
    "CifarNetBody",
    "Classifier",
    "GoogLeNet",
    "MLPBody",
    "NiNBody",
    "build_model",
]
