"""Where a penalty strategy's training step spends its time beyond naive's, side by side in one process.

    PYTHONPATH=. python scripts/profile_strategy_step.py --repeats=5

One fit (``engine.make_fit``: the device loop, the divergence guard) of the MLP 784-400-400-10 on
``--examples`` random rows for ``--epochs`` epochs at mini-batch 128, with SGD (no momentum) and
these optimizer chains: naive (SGD), + the anchor penalty (EWC's step, eq. 7), + the SI path tracker
(eq. 9) alone, and both (SI's and AR1's step). Prints each one's median seconds and its median
ratio over naive within a round (the ratio cancels load shared with other processes).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from cljax import engine, transforms
from cljax.models import Classifier, MLPBody

_EXAMPLES = flags.DEFINE_integer("examples", 6000, "rows of the batch")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "epochs")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed rounds")


def chains() -> dict[str, optax.GradientTransformation]:
    sgd = lambda: engine.make_optimizer("sgd")  # noqa: E731
    return {
        "naive": sgd(),
        "penalty": optax.chain(transforms.anchor_penalty_in_state(), sgd()),
        "tracker": optax.chain(sgd(), transforms.si_path_tracker()),
        "si": optax.chain(transforms.anchor_penalty_in_state(), sgd(), transforms.si_path_tracker()),
    }


def main(argv):
    del argv
    model = Classifier(MLPBody((400, 400)), 10)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((_EXAMPLES.value, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, _EXAMPLES.value).astype(np.int32))
    params = model.init(jax.random.key(0), x[:1])
    fits, states = {}, {}
    for name, tx in chains().items():
        state = engine.TrainState(params, tx.init(params), {})
        state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, 0.01))
        if name in ("penalty", "si"):  # a live penalty: F̂ > 0, λ > 0
            state = state._replace(opt_state=transforms.set_hyperparams(state.opt_state, strength=10.0))
            state = state._replace(
                opt_state=transforms.replace_anchor_state(
                    state.opt_state, importance=jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
                )
            )
        fits[name] = engine.make_fit(model.apply, tx, engine.cross_entropy, 128)
        states[name] = state

    def once(name) -> float:
        start = time.perf_counter()
        out, _ = fits[name](
            states[name], {"x": x, "y": y}, _EXAMPLES.value, _EPOCHS.value, jnp.ones(10, bool), jax.random.key(1)
        )
        jax.block_until_ready(out)
        return time.perf_counter() - start

    for name in fits:
        once(name)  # compile
    seconds = {name: [] for name in fits}
    for _ in range(_REPEATS.value):
        for name in fits:
            seconds[name].append(once(name))
    naive = np.asarray(seconds["naive"])
    for name, s in seconds.items():
        ratios = np.asarray(s) / naive
        spread = f"({ratios.min():.3f}-{ratios.max():.3f})"
        print(f"{name:<10}{statistics.median(s):8.3f} s  x naive {np.median(ratios):.3f} {spread}")


if __name__ == "__main__":
    app.run(main)
