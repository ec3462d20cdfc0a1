"""Caffe layer semantics the paper's CORe50 models depend on (App. B, Table 3).

- ``local_response_norm``: Caffe's LRN layer, ACROSS_CHANNELS mode (CaffeNet
  norm1/norm2, GoogLeNet pool1/norm1 and conv2/norm2).
- ``GroupedConv``: Caffe's ``group`` convolution (CaffeNet conv2/4/5).
- ``caffe_pool``: Caffe pooling, whose output size rounds *up*
  (``ceil((H + 2p - k) / s) + 1``), unlike Flax/XLA's round-down; on the
  128x128 GoogLeNet this makes pool1 61x61 instead of 60x60 and pool3 15x15
  instead of 14x14, which the 4x4 auxiliary-classifier input relies on.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def local_response_norm(
    x_BxHxWxC: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> jax.Array:
    """y_c = x_c / (k + alpha/size * Σ_{|c'-c| <= size//2} x_c'^2)^beta  (Caffe LRN, across channels).

    Channels beyond the edges count as zero, as in Caffe. Caffe divides alpha by
    the window size (TensorFlow's ``tf.nn.lrn`` does not).
    """
    if size % 2 != 1:
        raise ValueError(f"LRN size={size} must be odd (Caffe's window is centred)")
    half = size // 2
    square_sums = jax.lax.reduce_window(
        jnp.square(x_BxHxWxC), 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), ((0, 0), (0, 0), (0, 0), (half, half))
    )
    return x_BxHxWxC * (k + (alpha / size) * square_sums) ** (-beta)


def caffe_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled size: rounds up, then drops a last window that would start in the padding."""
    if size + 2 * pad < kernel:
        raise ValueError(
            f"pooling window {kernel} is larger than the padded input {size + 2 * pad}; the input image is too small "
            "for this model (use a larger image_size)"
        )
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_pool(x_BxHxWxC: jax.Array, kind: str, kernel: int, stride: int, pad: int = 0) -> jax.Array:
    """Caffe MAX or AVE pooling (square window) with Caffe's output size.

    Windows that hang over the bottom/right edge (the round-up) see -inf for MAX;
    for AVE the divisor counts the window's cells inside the padded input
    (``(min(start + k, H + pad) - start)`` per axis), so explicit padding counts
    and the overhang does not, exactly as Caffe's ``pool_size``.
    """
    _, h, w, _ = x_BxHxWxC.shape
    out_h, out_w = caffe_output_size(h, kernel, stride, pad), caffe_output_size(w, kernel, stride, pad)
    # Extra cells past the padded input needed by the last window (>= 0).
    extra_h = max(0, (out_h - 1) * stride + kernel - (h + 2 * pad))
    extra_w = max(0, (out_w - 1) * stride + kernel - (w + 2 * pad))
    padding = ((0, 0), (pad, pad + extra_h), (pad, pad + extra_w), (0, 0))
    window, strides = (1, kernel, kernel, 1), (1, stride, stride, 1)
    if kind == "max":
        pooled = jax.lax.reduce_window(x_BxHxWxC, -jnp.inf, jax.lax.max, window, strides, padding)
    elif kind == "avg":
        sums = jax.lax.reduce_window(x_BxHxWxC, 0.0, jax.lax.add, window, strides, padding)
        # 1 on the padded input (explicit padding included), 0 on the overhang.
        inside = jnp.pad(
            jnp.ones((1, h + 2 * pad, w + 2 * pad, 1), x_BxHxWxC.dtype), ((0, 0), (0, extra_h), (0, extra_w), (0, 0))
        )
        counts = jax.lax.reduce_window(inside, 0.0, jax.lax.add, window, strides, "VALID")
        pooled = sums / counts
    else:
        raise ValueError(f"pooling kind={kind!r} is unknown; allowed: avg, max")
    return pooled[:, :out_h, :out_w, :]


def global_avg_pool(x_BxHxWxC: jax.Array) -> jax.Array:
    """Mean over the spatial axes: [B, H, W, C] -> [B, C] (NiN pool4, GoogLeNet pool5 at any input size)."""
    return jnp.mean(x_BxHxWxC, axis=(1, 2))


class GroupedConv(nn.Module):
    """Convolution with ``groups`` filter groups (Caffe ``group``), params as ``nn.Conv(feature_group_count=groups)``.

    ``kernel`` [k, k, C_in / groups, C_out] and ``bias`` [C_out]; group g maps
    input channels g·C_in/groups.. to output channels g·C_out/groups... It runs
    one ungrouped convolution per group: XLA:CPU's grouped convolution is
    several times slower than that (about 4x for CaffeNet's conv2 gradient
    here), and on GPUs the two are alike.
    """

    features: int
    kernel_size: int
    groups: int
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in, k, g = x.shape[-1], self.kernel_size, self.groups
        if c_in % g or self.features % g:
            raise ValueError(f"{c_in} input and {self.features} output channels do not split into {g} groups")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c_in // g, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        pad = ((self.padding, self.padding), (self.padding, self.padding))
        outputs = [
            jax.lax.conv_general_dilated(x_part, kernel_part, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            for x_part, kernel_part in zip(jnp.split(x, g, axis=-1), jnp.split(kernel, g, axis=-1), strict=True)
        ]
        return jnp.concatenate(outputs, axis=-1) + bias
