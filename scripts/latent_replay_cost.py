"""What a replayed latent costs next to a replayed image: one training step (loss and gradient) of

- ``latent``: B new images through the whole net and R stored latents through the layers above
  ``--layer`` only (AR1*, ``cljax.models.latent.replaying``);
- ``images``: the same B + R rows as images through the whole net (what rehearsal of raw images pays);
- ``new_only``: the B new images alone (no replay).

    python scripts/latent_replay_cost.py --model=cifarnet --input_shape=32,32,3 --layer=fc1 --batch=64 --replay=64
    python scripts/latent_replay_cost.py --model=caffenet --input_shape=128,128,3 --layer=conv5 --batch=16 --replay=16

Side by side in one process, each jitted step timed over ``--repeats`` calls after its compiling
call (median); prints one JSON line with the seconds per step and the ratios.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from cljax.config import base_config
from cljax.engine import split_outputs
from cljax.models import build_model, latent

_MODEL = flags.DEFINE_string("model", "cifarnet", "any registered model")
_SHAPE = flags.DEFINE_list("input_shape", ["32", "32", "3"], "H,W,C")
_LAYER = flags.DEFINE_string("layer", "fc1", "latent layer (as ar1_star.latent_layer)")
_BATCH = flags.DEFINE_integer("batch", 64, "new images per step")
_REPLAY = flags.DEFINE_integer("replay", 64, "replayed rows per step")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls after the compiling one")
_CLASSES = flags.DEFINE_integer("classes", 10, "head size")


def main(argv):
    del argv
    config = base_config()
    config.model = _MODEL.value
    shape = tuple(int(s) for s in _SHAPE.value)
    model = build_model(config, _CLASSES.value)
    split = latent.split_model(model, shape, _LAYER.value)
    b, r = _BATCH.value, _REPLAY.value
    keys = jax.random.split(jax.random.key(0), 4)
    params = jax.jit(model.init)(keys[0], jnp.zeros((1, *shape)))
    x_new = jax.random.uniform(keys[1], (b, *shape))
    x_old = jax.random.uniform(keys[2], (r, *shape))
    y = jax.random.randint(keys[3], (b + r,), 0, _CLASSES.value)
    z_old = jax.jit(lambda p, x: latent.latents(model.apply, p, x, split))(params, x_old)

    def loss(params, x, labels, z=None):
        def forward():
            return model.apply(params, x, train=True, rngs={"dropout": jax.random.key(1)})

        if z is None:
            outputs = forward()
        else:
            with latent.replaying(split, z):
                outputs = forward()
        logits, _ = split_outputs(outputs)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    grad = jax.value_and_grad(loss)
    steps = {
        "latent": (jax.jit(grad), (params, x_new, y, z_old)),
        "images": (jax.jit(grad), (params, jnp.concatenate([x_new, x_old]), y)),
        "new_only": (jax.jit(grad), (params, x_new, y[:b])),
    }
    seconds = {}
    for name, (step, args) in steps.items():
        jax.block_until_ready(step(*args))  # compiles
        times = []
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
    print(
        json.dumps(
            {
                "model": _MODEL.value,
                "layer": split.name,
                "batch": b,
                "replay": r,
                "device": jax.devices()[0].platform,
                "seconds_per_step": {k: round(v, 5) for k, v in seconds.items()},
                "latent_over_images": round(seconds["latent"] / seconds["images"], 3),
                "latent_over_new_only": round(seconds["latent"] / seconds["new_only"], 3),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
