"""A feature extractor followed by the classifier layer ``head`` (all models share this shape).

``features`` is exposed as a method so that strategies that freeze the shared
weights Θ̄ (CWR, CWR+) can compute the penultimate activations once and train
the head alone: ``model.apply(params, x, method="features")``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cljax.models.mlp import dense_initializers


class Classifier(nn.Module):
    body: nn.Module  # x -> [B, D] penultimate activations; its params live under "body"
    num_classes: int
    dense_init: str = "lecun"  # the head's initialisation (``mlp.DENSE_INITS``)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = self.features(x, train)
        return nn.Dense(self.num_classes, name="head", **dense_initializers(self.dense_init, h.shape[-1]))(h)

    def features(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self.body(x, train)
