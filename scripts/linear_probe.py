"""Ceiling of a frozen pre-trained body (the pre-trained protocol, BUILD_NOTES.md): one linear head trained
on all 10 classes jointly vs five heads trained two classes at a time (each pair its own softmax, bias 0,
weights mean-shifted as CWR+), on the stream images (the slice held out), scored on the official test set.

PYTHONPATH=$PWD python3 scripts/linear_probe.py WORKDIR/pretrained/all10-<hash> [all10|half5]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import pretraining
from cljax.config import base_config
from cljax.models import apply_function, build_model
from cljax.models.pretrained import restore_params
from cljax.scenarios import load_fashion_mnist


def features(apply, params, x: np.ndarray) -> np.ndarray:
    feat = jax.jit(lambda x: apply(params, x, train=False, method="features"))
    return np.concatenate([np.asarray(feat(x[i : i + 5000])) for i in range(0, len(x), 5000)])


def fit(x, y, classes, steps=300, lr=0.1, bias=True):
    """A softmax linear head over ``classes`` (full-batch Adam)."""
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c in y])
    params = (jnp.zeros((x.shape[1], len(classes))), jnp.zeros(len(classes)))
    tx = optax.adam(lr)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        def loss(p):
            logits = x @ p[0] + (p[1] if bias else 0)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params


def main(ckpt: str, slice_name: str = "all10") -> None:
    config = base_config()
    config.hidden_sizes = (256,)
    full = load_fashion_mnist("/usr/share/datasets/fashion-mnist")
    _, stream = pretraining.split_dataset(full, slice_name, 0)
    params = restore_params(ckpt)
    apply = apply_function(build_model(config, 10), 255.0)
    ftr, fte = features(apply, params, stream.train_x), features(apply, params, full.test_x)
    ytr, yte = stream.train_y, full.test_y
    w, b = fit(ftr, ytr, list(range(10)))
    joint = float(np.mean(np.argmax(fte @ w + b, 1) == yte))
    heads = np.zeros((ftr.shape[1], 10))
    for pair in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]:
        rows = np.isin(ytr, pair)
        w, _ = fit(ftr[rows], ytr[rows], list(pair), bias=False)
        heads[:, list(pair)] = np.asarray(w) - np.asarray(w).mean(axis=1, keepdims=True)  # CWR+ mean-shift
    pairs = float(np.mean(np.argmax(fte @ heads, 1) == yte))
    print(f"joint 10-class linear head {joint:.3f}; five 2-class heads {pairs:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
