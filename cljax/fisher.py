"""Diagonal empirical Fisher from per-pattern gradients, at the cost of one forward and backward pass.

EWC's F^i (eq. 8) is the mean over the patterns of B_i of the squared per-pattern gradients of the
task loss, Σ_n w_n·g_n² / n (w_n: 1 for real rows, 0 for padding). Computing every g_n (vmap of
grad) costs a backward pass per pattern and memory per pattern; for the layers below, Σ_n w_n·g_n²
follows from one batched forward pass (each layer's input a_n) and one backward pass of Σ_n ℓ_n
(each layer's output gradient δ_n = ∂ℓ_n/∂z_n: patterns do not interact in inference mode):

- ``nn.Dense`` on [B, in]: g_n = a_n ⊗ δ_n, so Σ_n w_n·g_n² = (w·a²)ᵀ(δ²) for the kernel and
  Σ_n w_n·δ_n² for the bias — one matmul, no per-pattern gradient;
- ``nn.Conv`` (one batch axis, one filter group, no mask): g_n = Σ_p patch_{n,p} ⊗ δ_{n,p} over
  the output positions p; the square of that sum does not factor, so the per-pattern kernel
  gradients are formed (a batched matmul of patches and δ), squared and summed (faster than the
  vmapped gradient, which XLA runs as a grouped convolution);
- every other parameter (other layers, a layer whose weights are used more than once, anything
  the checks below do not recognise): per-pattern gradients by vmap of grad, for those
  parameters only.

δ comes from zero "probes" added to each recognised layer's output through flax's
``intercept_methods``; the layers' inputs are captured the same way. A layer is recognised only
if its parameters are leaves of ``params`` (by identity) that the model uses exactly once, in
the layer's own matmul or convolution, so weight sharing or a lifted transform falls back to
vmap. Everything here is traceable: it runs inside jit and vmap (EWC's ``after_batch``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

Params = Any
# losses(params, *data) -> the per-pattern losses [N] of the N rows of ``data`` (arrays sharing axis 0)
Losses = Callable[..., jax.Array]

# The primitive a recognised layer's kernel (and bias) may feed, and nothing else.
_KERNEL_USE = {nn.Dense: "dot_general", nn.Conv: "conv_general_dilated"}
_BIAS_USES = ("reshape", "broadcast_in_dim", "add")


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer whose Fisher comes from its input and output gradient."""

    path: tuple[str, ...]  # the module's scope path: how the interceptor finds it again
    kind: type  # nn.Dense or nn.Conv
    kernel: int  # index of its kernel among the leaves of params
    bias: int | None  # index of its bias, None without one
    output: jax.ShapeDtypeStruct  # its output on the chunk (the probe's shape)
    conv: dict[str, Any] | None  # nn.Conv: the arguments of conv_general_dilated_patches


def _tuple(value, rank: int) -> tuple[int, ...]:
    value = 1 if value is None else value
    return (value,) * rank if isinstance(value, int) else tuple(value)


def _conv_patches_args(module: nn.Conv, x_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """``conv_general_dilated_patches`` arguments reproducing ``module`` on inputs of ``x_shape``;
    None when the patch formulation does not apply."""
    kernel_size = _tuple(module.kernel_size, 1)
    rank = len(kernel_size)
    if (
        len(x_shape) != rank + 2  # one batch axis
        or module.feature_group_count != 1
        or module.mask is not None
        or module.conv_general_dilated is not None
        or module.conv_general_dilated_cls is not None
    ):
        return None
    padding = canonicalize_padding(module.padding, rank)
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
        return None  # CIRCULAR, REFLECT, CAUSAL pad the input inside the layer
    return dict(
        filter_shape=kernel_size,
        window_strides=_tuple(module.strides, rank),
        padding=padding,
        lhs_dilation=_tuple(module.input_dilation, rank),
        rhs_dilation=_tuple(module.kernel_dilation, rank),
    )


def find_layers(losses: Losses, params: Params, *data: jax.Array) -> tuple[Layer, ...]:
    """The Dense and Conv layers of ``losses(params, *data)`` whose Fisher can be computed from their
    inputs and output gradients (static: only shapes are traced)."""
    calls = []

    def forward(params, *data):
        index = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(params))}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            module = context.module
            if context.method_name == "__call__" and type(module) in _KERNEL_USE:
                inputs = args[0] if args else kwargs["inputs"]
                leaves = {k: index.get(id(v)) for k, v in module.variables.get("params", {}).items()}
                calls.append((module, inputs.shape, jax.ShapeDtypeStruct(out.shape, out.dtype), leaves))
            return out

        with nn.intercept_methods(record):
            return losses(params, *data)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (params, *data))
    jaxpr = jax.make_jaxpr(forward)(*abstract).jaxpr
    uses: dict[Any, list[str]] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, jax.extend.core.Literal):
                uses.setdefault(v, []).append(eqn.primitive.name)
    leaf_vars = jaxpr.invars[: len(jax.tree.leaves(params))]
    calls_per_path = Counter(tuple(module.scope.path) for module, *_ in calls)

    def used_once_by(leaf: int | None, allowed) -> bool:
        """The leaf feeds exactly one operation, of an allowed kind (no sharing, no lifted transform)."""
        if leaf is None:
            return False
        found = uses.get(leaf_vars[leaf], [])
        return len(found) == 1 and found[0] in allowed and leaf_vars[leaf] not in jaxpr.outvars

    layers = []
    for module, x_shape, output, leaves in calls:
        kind, path = type(module), tuple(module.scope.path)
        if calls_per_path[path] != 1 or set(leaves) - {"kernel", "bias"}:
            continue
        if not used_once_by(leaves.get("kernel"), _KERNEL_USE[kind]):
            continue
        if "bias" in leaves and not used_once_by(leaves["bias"], _BIAS_USES):
            continue
        if kind is nn.Dense and len(x_shape) != 2:
            continue  # a Dense over extra axes sums outer products within a pattern: vmap
        conv = _conv_patches_args(module, x_shape) if kind is nn.Conv else None
        if kind is nn.Conv and conv is None:
            continue
        layers.append(Layer(path, kind, leaves["kernel"], leaves.get("bias"), output, conv))
    return tuple(layers)


def _dense_sums(a_NxI, delta_NxO, w_N) -> tuple[jax.Array, jax.Array]:
    """Σ_n w_n·(a_n ⊗ δ_n)² = (w·a²)ᵀ(δ²) and Σ_n w_n·δ_n²."""
    squared = jnp.square(delta_NxO)
    return (w_N[:, None] * jnp.square(a_NxI)).T @ squared, w_N @ squared


def _conv_sums(a, delta, w_N, conv: dict[str, Any], kernel_shape) -> tuple[jax.Array, jax.Array]:
    """Σ_n w_n·g_n² of a convolution's kernel and bias, g_n = Σ_p patch_{n,p} ⊗ δ_{n,p}."""
    rank = len(conv["filter_shape"])
    spec = "N" + "HWD"[:rank] + "C"
    patches = jax.lax.conv_general_dilated_patches(
        a,
        dimension_numbers=(spec, "O" + "I" + "HWD"[:rank], spec),
        precision=jax.lax.Precision.HIGHEST,  # a copy of the inputs: keep every bit (TF32 on GPUs)
        **conv,
    )
    n, c_out = delta.shape[0], delta.shape[-1]
    patches = patches.reshape(n, -1, patches.shape[-1])  # [N, positions, C_in·prod(filter)]
    per_pattern = jnp.einsum("npk,npo->nko", patches, delta.reshape(n, -1, c_out))
    # Patch features run channel-major (C_in, *filter); the kernel is (*filter, C_in, C_out).
    per_pattern = per_pattern.reshape(n, kernel_shape[-2], *conv["filter_shape"], c_out)
    per_pattern = jnp.moveaxis(per_pattern, 1, rank + 1)
    kernel = jnp.einsum("n,n...->...", w_N, jnp.square(per_pattern))
    bias = w_N @ jnp.square(jnp.sum(delta.reshape(n, -1, c_out), axis=1))
    return kernel, bias


def squared_gradient_sums(
    losses: Losses, layers: tuple[Layer, ...], params: Params, weights_N: jax.Array, *data: jax.Array
) -> Params:
    """Σ_n w_n·g_n² over the N rows of ``data``, g_n the gradient of ``losses(params, *data)[n]``
    with respect to ``params`` (params-shaped). ``layers``: ``find_layers`` on data of these shapes."""
    leaves, treedef = jax.tree.flatten(params)
    covered = {i for layer in layers for i in (layer.kernel, layer.bias) if i is not None}
    rest = [i for i in range(len(leaves)) if i not in covered]
    sums: list[jax.Array | None] = [None] * len(leaves)

    if layers:
        by_path = {layer.path: layer for layer in layers}

        def summed_loss(probes):
            inputs = {}

            def probe(next_fun, args, kwargs, context):
                layer = by_path.get(tuple(context.module.scope.path)) if context.method_name == "__call__" else None
                if layer is None or type(context.module) is not layer.kind:
                    return next_fun(*args, **kwargs)
                inputs[layer.path] = args[0] if args else kwargs["inputs"]
                return next_fun(*args, **kwargs) + probes[layer.path]

            with nn.intercept_methods(probe):
                return jnp.sum(losses(params, *data)), inputs

        probes = {layer.path: jnp.zeros(layer.output.shape, layer.output.dtype) for layer in layers}
        deltas, inputs = jax.grad(summed_loss, has_aux=True)(probes)
        for layer in layers:
            a, delta = inputs[layer.path], deltas[layer.path]
            if layer.kind is nn.Dense:
                kernel, bias = _dense_sums(a, delta, weights_N)
            else:
                kernel, bias = _conv_sums(a, delta, weights_N, layer.conv, leaves[layer.kernel].shape)
            sums[layer.kernel] = kernel
            if layer.bias is not None:
                sums[layer.bias] = bias

    if rest:

        def pattern_loss(rest_leaves, *row):
            full = list(leaves)
            for i, leaf in zip(rest, rest_leaves, strict=True):
                full[i] = leaf
            return losses(jax.tree.unflatten(treedef, full), *(r[None] for r in row))[0]

        grads = jax.vmap(jax.grad(pattern_loss), in_axes=(None,) + (0,) * len(data))([leaves[i] for i in rest], *data)
        for i, g in zip(rest, grads, strict=True):
            sums[i] = jnp.einsum("n,n...->...", weights_N, jnp.square(g))

    return jax.tree.unflatten(treedef, [s.astype(leaf.dtype) for s, leaf in zip(sums, leaves, strict=True)])


def sum_over_chunks(
    fn: Callable[[tuple[jax.Array, ...]], Params], like: Params, chunk: int, *arrays: jax.Array
) -> Params:
    """Σ over the chunks of ``chunk`` rows of ``arrays`` (their length a multiple of ``chunk``) of
    ``fn((rows, ...))`` (``like``-shaped, float32), added up in the loop's carry: stacking every
    chunk's tree (``lax.map``) and summing afterwards writes and reads a parameter-sized array per
    chunk, which on CPU cost more than the chunks' forward and backward passes."""
    shaped = tuple(a.reshape((-1, chunk) + a.shape[1:]) for a in arrays)

    def add(total, rows):
        return jax.tree.map(lambda t, s: t + s.astype(t.dtype), total, fn(rows)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), like)
    return jax.lax.scan(add, zeros, shaped)[0]
