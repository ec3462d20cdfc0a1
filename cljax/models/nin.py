"""Network in Network (Lin, Chen & Yan 2014), the ImageNet model, adapted to 128x128 (paper Table 2).

The original ImageNet NiN (Caffe model zoo ``nin_imagenet``, 224x224 crops):

    conv1 96 11x11/4, cccp1 96 1x1, cccp2 96 1x1, pool 3x3/2
    conv2 256 5x5 pad 2, cccp3 256, cccp4 256, pool 3x3/2
    conv3 384 3x3 pad 1, cccp5 384, cccp6 384, pool 3x3/2, dropout 0.5
    conv4 1024 3x3 pad 1, cccp7 1024, cccp8 1000 (+ReLU), average pool 6x6 -> 1000 classes

every convolution followed by a ReLU and no LRN. The paper lists NiN's
128x128 CORe50 accuracy (Table 2) but not its changes; Table 3 gives them
for CaffeNet only, whose first two layers NiN shares. We apply the same
two: conv1 stride 4 -> 2 and conv2 pad 2 -> 1, which keep every later map
at its original size (128 -> 59 -> pool 29 -> 27 -> pool 13 -> pool 6, the
6x6 map the original averages globally).

The classifier is the ``head`` Dense on the globally averaged cccp7
features. In the original, cccp8 (a 1x1 convolution to the classes) comes
before the average pool; both are linear and commute, so ``head(mean(h))``
equals ``mean(cccp8(h))`` with the same parameters (1024 x classes + bias).
The original's ReLU on cccp8 is dropped: it would clip logits at zero and
break CWR's linear head on cached features (``features``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cljax.models.layers import caffe_pool, global_avg_pool

# (name, features, kernel, stride, pad) of each mlpconv block's first convolution,
# followed by two 1x1 "cccp" convolutions of the same width.
BLOCKS = (
    ("conv1", 96, 11, 2, 0),  # stride 4 in the original
    ("conv2", 256, 5, 1, 1),  # pad 2 in the original
    ("conv3", 384, 3, 1, 1),
    ("conv4", 1024, 3, 1, 1),
)


class NiNBody(nn.Module):
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = x_BxHxWxC
        cccp = 1
        for block, (name, features, kernel, stride, pad) in enumerate(BLOCKS):
            h = nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)), name=name)(h))
            # The last block's second 1x1 convolution (cccp8) is the head.
            for _ in range(2 if block < len(BLOCKS) - 1 else 1):
                h = nn.relu(nn.Conv(features, (1, 1), name=f"cccp{cccp}")(h))
                cccp += 1
            if block < len(BLOCKS) - 1:
                h = caffe_pool(h, "max", 3, 2)
            if block == len(BLOCKS) - 2:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return global_avg_pool(h)
