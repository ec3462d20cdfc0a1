"""Flax linen classifiers: a body (``features``) and a last layer named ``head``.

Strategies find the classifier by its name (``HEAD``), never by position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


COMPUTE_DTYPES = ("float32", "bfloat16")


def pixel_table(divisor: float) -> np.ndarray:
    """[256] float32: uint8 value v -> v / divisor, rounded as NumPy rounds it (XLA would turn a
    division by a constant into a multiplication by its reciprocal, which rounds differently)."""
    return np.arange(256, dtype=np.float32) / np.float32(divisor)


def float_images(x: jax.Array, divisor: float) -> jax.Array:
    """Images in their stored dtype (uint8) as float32 in [0, 1]; float images pass unchanged."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return jnp.asarray(pixel_table(divisor))[x]


def apply_function(model: nn.Module, x_divisor: float = 1.0, compute_dtype: str = "float32") -> Callable[..., Any]:
    """``model.apply`` for stored images and a compute precision: uint8 inputs become float32 inside
    the compiled program (``float_images``); with ``compute_dtype='bfloat16'`` parameters and inputs
    are cast to bfloat16 for the forward pass and the outputs back to float32, so parameters,
    gradients and optimizer state stay float32 (mixed precision)."""
    dtype = jnp.dtype(compute_dtype)

    def cast(tree):
        return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    def apply(params, x, *args, **kwargs):
        x = float_images(x, x_divisor)
        if dtype == jnp.float32:
            return model.apply(params, x, *args, **kwargs)
        out = model.apply(cast(params), x.astype(dtype), *args, **kwargs)
        return jax.tree.map(lambda a: a.astype(jnp.float32), out)

    return apply


def build_model(config, num_classes: int) -> nn.Module:
    if config.model not in MODELS:
        raise ValueError(f"model={config.model!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[config.model](config, num_classes)


__all__ = [
    "COMPUTE_DTYPES",
    "HEAD",
    "MODELS",
    "CaffeNetBody",
    "CifarNetBody",
    "Classifier",
    "GoogLeNet",
    "MLPBody",
    "NiNBody",
    "apply_function",
    "build_model",
    "float_images",
]
