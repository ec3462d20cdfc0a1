"""Multi-layer perceptron: flatten, ReLU hidden layers, classifier named ``head``."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    num_classes: int
    hidden_sizes: Sequence[int] = (400, 400)

    @nn.compact
    def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no dropout or batch norm
        h = x_BxHxWxC.reshape((x_BxHxWxC.shape[0], -1))
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, name=f"fc{i + 1}")(h))
        return nn.Dense(self.num_classes, name="head")(h)
