"""Flax linen classifiers: a body (``features``) and a last layer named ``head``.

Strategies find the classifier by its path (``HEAD`` = ``"head"``, or ``config.classifier`` for a
model of your own), never by position. The model contract, checked by ``check_model`` when an
experiment is built (before any training):

- ``model.apply(params, x, train=False)`` returns logits [B, C]; ``train=True`` with
  ``rngs={"dropout": key}`` returns logits (or ``(logits, ((weight, aux_logits), ...))``);
- ``model.apply(params, x, train=..., method="features")`` returns the penultimate features [B, D]
  (CWR, CWR+ train the classifier alone on them);
- ``params['params'][classifier]`` is a dense layer ``{'kernel': [D, C], 'bias': [C]}``.
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
    "mlp": lambda config, num_classes: Classifier(
        MLPBody(tuple(config.hidden_sizes), dense_init=config.dense_init), num_classes, dense_init=config.dense_init
    ),
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


class ModelContractError(ValueError):
    """A model that does not follow the model contract (one sentence naming what is missing)."""


def check_model(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, classifier: str = HEAD) -> None:
    """Checks the model contract (module docstring) on shapes only (``jax.eval_shape``: nothing is
    computed); raises ``ModelContractError`` naming the first thing missing."""
    name = type(model).__name__
    x = jnp.zeros((2, *input_shape), jnp.float32)
    key = jax.random.key(0)

    def fails(what: str, call: Callable[..., Any], *args) -> Any:
        try:
            return jax.eval_shape(call, *args)
        except Exception as e:  # user code: any failure is a contract violation
            cause = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise ModelContractError(f"model {name} {what} ({cause})") from None

    params = fails("cannot be initialised with model.init(key, x)", lambda: model.init({"params": key}, x))
    outputs = fails(
        "must accept train=True and rngs={'dropout': key} (model.apply(params, x, train=True, rngs=...))",
        lambda p: model.apply(p, x, train=True, rngs={"dropout": key}),
        params,
    )
    logits = fails("must accept train=False", lambda p: model.apply(p, x, train=False), params)
    if getattr(model, "features", None) is None:
        raise ModelContractError(
            f"model {name} has no features method: define features(self, x, train) returning the penultimate "
            "features [B, D] (CWR, CWR+ and the feature cache need it)"
        )
    features = fails("features(x, train) fails", lambda p: model.apply(p, x, train=False, method="features"), params)
    node = params.get("params", {}) if isinstance(params, dict) else {}
    for key_name in (k for k in classifier.split("/") if k):
        node = node.get(key_name) if isinstance(node, dict) else None
    if not isinstance(node, dict) or set(node) != {"kernel", "bias"}:
        layers = ", ".join(sorted(params.get("params", {}))) if isinstance(params, dict) else "?"
        raise ModelContractError(
            f"model {name} has no dense classifier layer at classifier={classifier!r} (a 'kernel' and a 'bias' "
            f"under params['params']); its top-level layers: {layers}; set --config.classifier to its name"
        )
    expected = (features.shape[-1], num_classes)
    if node["kernel"].shape != expected or node["bias"].shape != (num_classes,):
        raise ModelContractError(
            f"model {name}: classifier {classifier!r} has kernel {node['kernel'].shape}; the contract needs "
            f"{expected} (features dimension D x {num_classes} classes)"
        )
    first = outputs[0] if isinstance(outputs, tuple) else outputs
    for what, out in (("train=True", first), ("train=False", logits)):
        if getattr(out, "shape", None) != (2, num_classes):
            raise ModelContractError(
                f"model {name} with {what} returns {getattr(out, 'shape', type(out).__name__)}; "
                f"the contract needs logits [B, {num_classes}]"
            )


def build_model(config, num_classes: int) -> nn.Module:
    if config.model not in MODELS:
        raise ValueError(f"model={config.model!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[config.model](config, num_classes)


__all__ = [
    "COMPUTE_DTYPES",
    "HEAD",
    "ModelContractError",
    "check_model",
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
