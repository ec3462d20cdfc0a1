"""CaffeNet (BVLC reference CaffeNet) adapted to 128x128 inputs, paper App. B, Table 3.

Changes from the original, per Table 3: conv1 stride 4 -> 2, conv2 pad 2 -> 1,
fc6 and fc7 4096 -> 2048 neurons, fc8 (the ``head``) 1000 -> 50 outputs. With a
128x128 input the feature maps are (Caffe rounding, see ``layers``):

    conv1 11x11/2 -> 59x59x96, pool1 3x3/2 -> 29, norm1
    conv2 5x5 pad 1 (2 groups) -> 27x27x256, pool2 3x3/2 -> 13, norm2
    conv3 3x3 pad 1 -> 13x13x384, conv4 (2 groups) -> 13x13x384, conv5 (2 groups) -> 13x13x256
    pool5 3x3/2 -> 6x6x256 = 9216 -> fc6 2048 -> fc7 2048 -> head

so fc6 sees the same 6x6x256 map as the 227x227 original. CaffeNet differs
from AlexNet by pooling before normalising. conv2, conv4 and conv5 keep
Caffe's two filter groups (``GroupedConv``), so ImageNet weights of the
reference model fit.
Dropout 0.5 follows fc6 and fc7 (Caffe drop6/drop7).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cljax.models.layers import GroupedConv, caffe_pool, local_response_norm


class CaffeNetBody(nn.Module):
    fc_width: int = 2048  # Table 3: fc6/fc7 neurons (4096 in the original)
    lrn: bool = True  # Caffe norm1/norm2
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        def conv(h, features, kernel, name, stride=1, pad=0, groups=1):
            if groups > 1:
                return nn.relu(GroupedConv(features, kernel, groups, pad, name=name)(h))
            padding = ((pad, pad), (pad, pad))
            return nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride), padding, name=name)(h))

        norm = local_response_norm if self.lrn else (lambda h: h)
        h = conv(x_BxHxWxC, 96, 11, "conv1", stride=2)
        h = norm(caffe_pool(h, "max", 3, 2))
        h = conv(h, 256, 5, "conv2", pad=1, groups=2)
        h = norm(caffe_pool(h, "max", 3, 2))
        h = conv(h, 384, 3, "conv3", pad=1)
        h = conv(h, 384, 3, "conv4", pad=1, groups=2)
        h = conv(h, 256, 3, "conv5", pad=1, groups=2)
        h = caffe_pool(h, "max", 3, 2)
        h = h.reshape((h.shape[0], -1))
        for name in ("fc6", "fc7"):
            h = nn.relu(nn.Dense(self.fc_width, name=name)(h))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return h
