"""Multi-layer perceptron body: flatten, then ReLU hidden layers (default 2 x 400)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cljax.models.classifier import dense_initializers


class MLPBody(nn.Module):
    hidden_sizes: Sequence[int] = (400, 400)
    dense_init: str = "lecun"  # classifier.DENSE_INITS

    @nn.compact
    def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no dropout or batch norm
        h = x_BxHxWxC.reshape((x_BxHxWxC.shape[0], -1))
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, name=f"fc{i + 1}", **dense_initializers(self.dense_init, h.shape[-1]))(h))
        return h
