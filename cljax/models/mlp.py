"""Multi-layer perceptron body: flatten, then ReLU hidden layers (default 2 x 400)."""

from __future__ import annotations

from collections.abc import Sequence
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


class MLPBody(nn.Module):
    hidden_sizes: Sequence[int] = (400, 400)
    dense_init: str = "lecun"  # DENSE_INITS

    @nn.compact
    def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no dropout or batch norm
        h = x_BxHxWxC.reshape((x_BxHxWxC.shape[0], -1))
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, name=f"fc{i + 1}", **dense_initializers(self.dense_init, h.shape[-1]))(h))
        return h
