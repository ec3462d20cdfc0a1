"""A feature extractor followed by the classifier layer ``head`` (all models share this shape).

``features`` is exposed as a method so that strategies that freeze the shared
weights Θ̄ (CWR, CWR+) can compute the penultimate activations once and train
the head alone: ``model.apply(params, x, method="features")``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# How Dense layers start (config.dense_init): lecun is flax's default; torch is PyTorch's nn.Linear
# default, which Avalanche's models (the rehearsal baselines' reference numbers) start from.
DENSE_INITS = ("lecun", "torch")


def dense_initializers(name: str, fan_in: int) -> dict[str, Any]:
    """``nn.Dense`` initialiser arguments: lecun, LeCun normal kernels and zero biases (flax's
    defaults); torch, kernels and biases uniform in ±1/√fan_in (PyTorch's ``kaiming_uniform_(a=√5)``
    and its bias rule)."""
    if name == "lecun":
        return {}
    if name == "torch":
        bound = 1.0 / float(fan_in) ** 0.5

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        return {"kernel_init": uniform, "bias_init": uniform}
    raise ValueError(f"dense_init={name!r} is unknown; allowed: {', '.join(DENSE_INITS)}")


class Classifier(nn.Module):
    body: nn.Module  # x -> [B, D] penultimate activations; its params live under "body"
    num_classes: int
    dense_init: str = "lecun"  # the head's initialisation (``DENSE_INITS``)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = self.features(x, train)
        return nn.Dense(self.num_classes, name="head", **dense_initializers(self.dense_init, h.shape[-1]))(h)

    def features(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self.body(x, train)
