"""CifarNet of Zenke, Poole & Ganguli 2017 (App. A), used by the paper for iCIFAR-100 (sec. 4.3).

4 convolutions (32, 32, 64, 64 filters, 3x3; the first of each pair 'same', the
second 'valid'), 2x2 max pooling and dropout 0.25 after each pair, a 512-unit
fully connected layer with dropout 0.5; the classifier ``head`` follows.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class CifarNetBody(nn.Module):
    conv_dropout: float = 0.25
    fc_dropout: float = 0.5

    @nn.compact
    def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = x_BxHxWxC
        for block, features in enumerate((32, 64)):
            h = nn.relu(nn.Conv(features, (3, 3), padding="SAME", name=f"conv{2 * block + 1}")(h))
            h = nn.relu(nn.Conv(features, (3, 3), padding="VALID", name=f"conv{2 * block + 2}")(h))
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
            h = nn.Dropout(self.conv_dropout, deterministic=not train)(h)
        h = h.reshape((h.shape[0], -1))
        h = nn.relu(nn.Dense(512, name="fc1")(h))
        return nn.Dropout(self.fc_dropout, deterministic=not train)(h)
