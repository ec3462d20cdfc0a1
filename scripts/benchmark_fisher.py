"""EWC's diagonal Fisher on one batch: the ways to compute it, side by side in one process.

    PYTHONPATH=. python scripts/benchmark_fisher.py                                   # MLP 784-400-400-10, 12,000 rows
    PYTHONPATH=. python scripts/benchmark_fisher.py --model=cifarnet --input_shape=32,32,3 --examples=2000
    PYTHONPATH=. python scripts/benchmark_fisher.py --vmapped=False --chunk=512   # without the slow vmapped rows

Methods (``fisher_batch_size`` = ``--chunk`` rows per chunk, as ``cljax.strategies.ewc.diagonal_fisher``):

- ``per_example``: what EWC runs (``cljax.fisher``: Dense and Conv layers from one forward and
  backward pass per chunk, vmap of grad for anything else);
- ``per_example, convs vmapped``: the same with convolutions left to vmap of grad (the alternative
  for convolutions; only printed for models with convolutions);
- ``vmapped``: every parameter by vmap of grad (per-pattern gradients materialised: EWC before);
- ``minibatch``: App. A's variant (squared mini-batch gradients), for scale;
- ``train epoch``: one epoch of SGD training on the same rows at mini-batch ``--batch_size``, for scale
  (with the step loop a run would use: on the host for a convolutional model on CPU).

Synthetic data (random images, 10 classes); prints the median seconds of ``--repeats`` calls after
a compiling one, and the ratios. BUILD_NOTES.md records measured outputs with their commands.
"""

from __future__ import annotations

import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cljax import engine, fisher
from cljax.config import base_config
from cljax.experiment import step_loop
from cljax.models import build_model
from cljax.strategies.ewc import _example_losses, diagonal_fisher

_MODEL = flags.DEFINE_string("model", "mlp", "mlp | cifarnet (any registered model)")
_SHAPE = flags.DEFINE_list("input_shape", ["28", "28", "1"], "H,W,C")
_EXAMPLES = flags.DEFINE_integer("examples", 12000, "rows of the batch")
_CHUNK = flags.DEFINE_integer("chunk", 64, "rows per chunk (fisher_batch_size)")
_BATCH = flags.DEFINE_integer("batch_size", 128, "mini-batch of the training epoch shown for scale")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls after the compiling one")
_VMAPPED = flags.DEFINE_boolean("vmapped", True, "also time the methods that vmap grad (slow with large chunks)")


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk", "keep"))
def fisher_with(apply_fn, params, x, y, mask, chunk: int, keep: str):
    """``diagonal_fisher``'s per-example sum over chunks with only the layers ``keep`` allows on
    the fast path: ``all``, ``dense`` or ``none``."""
    losses = functools.partial(_example_losses, apply_fn, logit_mask=mask)
    layers = fisher.find_layers(losses, params, x[:chunk], y[:chunk])
    layers = {"all": layers, "dense": tuple(L for L in layers if L.kind is nn.Dense), "none": ()}[keep]
    weights = jnp.ones(x.shape[0], jnp.float32)

    def chunk_sum(args):
        return fisher.squared_gradient_sums(losses, layers, params, *args)

    sums = fisher.sum_over_chunks(chunk_sum, params, chunk, weights, x, y)
    return jax.tree.map(lambda s: s / x.shape[0], sums)


def timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compiles
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv):
    del argv
    config = base_config()
    config.model = _MODEL.value
    shape = tuple(int(s) for s in _SHAPE.value)
    n, chunk = _EXAMPLES.value - _EXAMPLES.value % _CHUNK.value, _CHUNK.value
    model = build_model(config, 10)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((n,) + shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    mask = jnp.ones(10, bool)
    params = jax.jit(model.init)(jax.random.key(0), x[:1])
    has_convs = any(leaf.ndim == 4 for leaf in jax.tree.leaves(params))

    methods = {"per_example": lambda: fisher_with(model.apply, params, x, y, mask, chunk, "all")}
    if has_convs and _VMAPPED.value:
        methods["per_example, convs vmapped"] = lambda: fisher_with(model.apply, params, x, y, mask, chunk, "dense")
    if _VMAPPED.value:
        methods["vmapped"] = lambda: fisher_with(model.apply, params, x, y, mask, chunk, "none")
    methods["minibatch"] = lambda: diagonal_fisher(
        model.apply, params, x, y, n, mask, jax.random.key(1), mode="minibatch", chunk=chunk
    )
    tx = engine.make_optimizer("sgd")
    # The step loop the library picks (on the host for convolutions on CPU, jax-ml/jax#12868).
    fit = engine.make_fit(model.apply, tx, engine.cross_entropy, _BATCH.value, loop=step_loop("auto", model, shape))
    state = engine.TrainState(params, engine.set_learning_rate(tx.init(params), 0.001), ())
    methods["train epoch"] = lambda: fit(state, {"x": x, "y": y}, n, 1, mask, jax.random.key(2))

    seconds = {name: timed(fn, _REPEATS.value) for name, fn in methods.items()}
    print(f"{jax.default_backend()}: {_MODEL.value} {shape}, {n} rows, chunks of {chunk}")
    base = seconds["train epoch"]
    for name, s in seconds.items():
        speedup = f"  {seconds['vmapped'] / s:6.1f}x faster than vmapped" if "vmapped" in seconds else ""
        print(f"{name:<28}{s:8.3f} s  {s / base:6.2f}x a training epoch{speedup}")


if __name__ == "__main__":
    app.run(main)
