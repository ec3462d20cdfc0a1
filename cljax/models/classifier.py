"""A feature extractor followed by the classifier layer ``head`` (all models share this shape).

``features`` is exposed as a method so that strategies that freeze the shared
weights Θ̄ (CWR, CWR+) can compute the penultimate activations once and train
the head alone: ``model.apply(params, x, method="features")``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Classifier(nn.Module):
    body: nn.Module  # x -> [B, D] penultimate activations; its params live under "body"
    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return nn.Dense(self.num_classes, name="head")(self.features(x, train))

    def features(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self.body(x, train)
