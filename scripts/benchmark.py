"""Training throughput of one incremental batch: compile time and steady-state examples/s.

    python scripts/benchmark.py --model=cifarnet --input_shape=32,32,3 --examples=5000 --batch_size=128
    python scripts/benchmark.py --model=mlp --input_shape=28,28,1 --examples=12000 --batch_size=32

Synthetic data (random images, 10 classes): the numbers measure the engine's
compiled loop (one jit call per batch: all epochs and mini-batches), not a
dataset. Prints one JSON line; BUILD_NOTES.md records measured lines with the
command and the device.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cljax import engine
from cljax.config import base_config
from cljax.models import build_model

_MODEL = flags.DEFINE_string("model", "mlp", "mlp | cifarnet (any registered model)")
_SHAPE = flags.DEFINE_list("input_shape", ["28", "28", "1"], "H,W,C")
_EXAMPLES = flags.DEFINE_integer("examples", 12000, "training examples in the batch")
_BATCH = flags.DEFINE_integer("batch_size", 32, "mini-batch size")
_EPOCHS = flags.DEFINE_integer("epochs", 1, "epochs per timed call")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls after the compiling one")
_CLASSES = flags.DEFINE_integer("classes", 10, "head size")
_LOOP = flags.DEFINE_enum(
    "loop", "device", ["device", "host"], "step loop: compiled (device) or a jitted call per step"
)


def main(argv):
    del argv
    config = base_config()
    config.model = _MODEL.value
    shape = tuple(int(s) for s in _SHAPE.value)
    model = build_model(config, _CLASSES.value)
    tx = engine.make_optimizer("sgd", 0.9)
    fit = engine.make_fit(model.apply, tx, engine.cross_entropy, _BATCH.value, loop=_LOOP.value)
    rng = np.random.default_rng(0)
    data = jax.device_put(
        {
            "x": rng.random((_EXAMPLES.value,) + shape, dtype=np.float32),
            "y": rng.integers(0, _CLASSES.value, _EXAMPLES.value).astype(np.int32),
        }
    )
    params = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
    state = engine.TrainState(params, engine.set_learning_rate(tx.init(params), 0.001), ())
    mask = jnp.ones(_CLASSES.value, bool)

    def call(state, seed):
        start = time.perf_counter()
        state, metrics = fit(state, data, _EXAMPLES.value, _EPOCHS.value, mask, jax.random.key(seed))
        jax.block_until_ready(state)
        return state, time.perf_counter() - start, int(metrics.steps)

    state, first_seconds, steps = call(state, 0)
    seconds = []
    for seed in range(1, _REPEATS.value + 1):
        state, s, _ = call(state, seed)
        seconds.append(s)
    steady = statistics.median(seconds)
    print(
        json.dumps(
            {
                "device": str(jax.devices()[0].device_kind),
                "backend": jax.default_backend(),
                "model": _MODEL.value,
                "loop": _LOOP.value,
                "input_shape": shape,
                "examples": _EXAMPLES.value,
                "batch_size": _BATCH.value,
                "epochs": _EPOCHS.value,
                "steps_per_call": steps,
                "first_call_seconds": round(first_seconds, 3),
                "steady_call_seconds": round(steady, 4),
                "examples_per_second": round(_EXAMPLES.value * _EPOCHS.value / steady, 1),
                "compiles": fit._cache_size(),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
