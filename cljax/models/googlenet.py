"""GoogLeNet (BVLC ``bvlc_googlenet``, Szegedy et al. 2015) adapted to 128x128, paper App. B, Table 3.

Changes from the original, per Table 3: conv1/7x7_s2 stride 2 -> 1 and pad
3 -> 0; loss1/ave_pool and loss2/ave_pool kernel 5 -> 6; loss1/fc and
loss2/fc (1024 neurons) removed; the three classifiers (loss1, loss2, loss3)
resized to the scenario's classes. With a 128x128 input (Caffe rounding up):

    conv1 7x7/1 -> 122x122x64, pool1 3x3/2 -> 61, norm1
    conv2 1x1 64, 3x3 192, norm2, pool2 3x3/2 -> 30
    inception 3a, 3b (30x30), pool3 3x3/2 -> 15
    inception 4a (-> aux1), 4b, 4c, 4d (-> aux2), 4e (15x15), pool4 3x3/2 -> 7
    inception 5a, 5b (7x7x1024), pool5 average -> 1024, dropout 0.4 -> head

    aux: average pool 6x6/3 (15 -> 4x4), conv 1x1 128 + ReLU, flatten 2048,
         dropout 0.7, classifier (loss1/fc and its ReLU removed)

so the 4x4 auxiliary maps and the 7x7 final map are those of the 224x224
original. pool5 is a global average (Caffe's 7x7 kernel on the 7x7 map; a
global mean also serves the smaller inputs of CPU experiments). The 5x5
branch uses 5x5 kernels as in Caffe (torchvision's GoogLeNet uses 3x3 there;
``import_torch`` embeds those in 5x5 kernels exactly).

Auxiliary classifiers. Both are kept (each with ``num_classes`` outputs) and
live inside ``body`` (``body/aux1``, ``body/aux2``), so to every strategy they
are shared weights Θ̄, never the consolidated ``head``:

- Training (``train=True``) returns ``(logits, ((w, aux1_logits), (w, aux2_logits)))``
  with w = ``aux_loss_weight`` (Caffe: 0.3 each); the engine adds w times the
  strategy's per-example loss on each auxiliary output (``engine.split_outputs``).
  ``aux_loss_weight=0`` returns plain logits and leaves the auxiliary weights
  untouched.
- Inference (``train=False``) returns the main logits only, as Caffe's deploy
  net; ``features`` returns the 1024 pool5 features the ``head`` reads.
- CWR/CWR+: the auxiliary classifiers train with Θ̄ on B_1 and are frozen with
  it afterwards (their loss then moves nothing: they do not feed the head).
  AR1: they keep training with Θ̄ under the SI penalty. LwF: their loss uses
  the same soft targets as the main head. Naive/EWC/SI/Cumulative: trained
  with Θ̄. None of them ever takes part in evaluation.

Batch normalisation: the Caffe GoogLeNet has none and neither has this
model. torchvision's (conv + BN + ReLU) weights are imported with each
eval-mode BN folded into its convolution (``import_torch``); with
``lrn=False``, as torchvision has no LRN.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cljax.models.layers import caffe_pool, global_avg_pool, local_response_norm

# name: (1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) output channels (Szegedy et al. 2015, Table 1).
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
AUX_LOSS_WEIGHT = 0.3  # Caffe's loss1/loss2 loss_weight


def conv_relu(h: jnp.ndarray, features: int, kernel: int, stride: int = 1, pad: int = 0, name: str = "") -> jnp.ndarray:
    return nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)), name=name)(h))


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | max 3x3/1 -> 1x1."""

    widths: tuple[int, int, int, int, int, int]

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c1, r3, c3, r5, c5, pool_proj = self.widths
        branch1 = conv_relu(x, c1, 1, name="1x1")
        branch2 = conv_relu(conv_relu(x, r3, 1, name="3x3_reduce"), c3, 3, pad=1, name="3x3")
        branch3 = conv_relu(conv_relu(x, r5, 1, name="5x5_reduce"), c5, 5, pad=2, name="5x5")
        branch4 = conv_relu(caffe_pool(x, "max", 3, 1, pad=1), pool_proj, 1, name="pool_proj")
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class AuxClassifier(nn.Module):
    """loss1/loss2 as modified by Table 3: average pool 6x6/3, 1x1 conv 128 + ReLU, classifier."""

    num_classes: int
    dropout: float = 0.7

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        h = conv_relu(caffe_pool(x, "avg", 6, 3), 128, 1, name="conv")
        h = h.reshape((h.shape[0], -1))
        # loss1/fc is removed; its dropout (drop_fc, 0.7) is kept before the classifier.
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.num_classes, name="classifier")(h)


class GoogLeNetBody(nn.Module):
    """Everything but the main classifier: returns (pool5 features [B, 1024], (aux1 logits, aux2 logits))."""

    num_classes: int  # outputs of the two auxiliary classifiers
    lrn: bool = True  # Caffe pool1/norm1 and conv2/norm2
    dropout: float = 0.4  # pool5/drop_7x7_s1
    aux_dropout: float = 0.7

    @nn.compact
    def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
        norm = local_response_norm if self.lrn else (lambda h: h)
        h = conv_relu(x_BxHxWxC, 64, 7, name="conv1")  # stride 1, pad 0 (Table 3)
        h = norm(caffe_pool(h, "max", 3, 2))
        h = conv_relu(h, 64, 1, name="conv2_reduce")
        h = norm(conv_relu(h, 192, 3, pad=1, name="conv2"))
        h = caffe_pool(h, "max", 3, 2)
        aux = []
        for name in INCEPTION:
            if name in ("4a", "5a"):
                h = caffe_pool(h, "max", 3, 2)
            h = Inception(INCEPTION[name], name=f"inception_{name}")(h)
            if name in ("4a", "4d"):
                aux_name = f"aux{len(aux) + 1}"
                aux.append(AuxClassifier(self.num_classes, self.aux_dropout, name=aux_name)(h, train))
        h = nn.Dropout(self.dropout, deterministic=not train)(global_avg_pool(h))
        return h, tuple(aux)


class GoogLeNet(nn.Module):
    """GoogLeNet body + main classifier ``head``; auxiliary logits only when training (see module doc)."""

    num_classes: int
    lrn: bool = True
    aux_loss_weight: float = AUX_LOSS_WEIGHT
    dropout: float = 0.4
    aux_dropout: float = 0.7

    def setup(self):
        self.body = GoogLeNetBody(self.num_classes, self.lrn, self.dropout, self.aux_dropout)
        self.head = nn.Dense(self.num_classes)

    def __call__(self, x: jnp.ndarray, train: bool = False):
        features, aux = self.body(x, train)
        logits = self.head(features)
        if train and self.aux_loss_weight > 0:
            return logits, tuple((self.aux_loss_weight, a) for a in aux)
        return logits

    def features(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self.body(x, train)[0]
