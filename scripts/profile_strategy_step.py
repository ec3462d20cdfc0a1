"""Where a penalty strategy's training step spends its time beyond naive's, side by side in one process.

    PYTHONPATH=. python scripts/profile_strategy_step.py --repeats=5

One fit (``engine.make_fit``: the device loop, the divergence guard) of the MLP 784-400-400-10 on
``--examples`` random rows for ``--epochs`` epochs at mini-batch 128, with SGD (no momentum) and
these optimizer chains: naive (SGD), + the anchor penalty (EWC's step, eq. 7), + the SI path tracker
(eq. 9) alone, and both (SI's and AR1's step). Prints each one's median seconds and its median
ratio over naive within a round (the ratio cancels load shared with other processes).

Timings on a shared machine are noisy; ``--hlo`` prints instead what does not depend on the load:
how many loop fusions of the compiled step (one member, unbatched, inside a ``fori_loop``, as the
engine runs a single member) write an array of the first layer's kernel shape, i.e. how many passes over the
largest weight matrix each step makes beyond the matmuls.
"""

from __future__ import annotations

import re
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
_HLO = flags.DEFINE_boolean("hlo", False, "count the kernel-sized fusions of each compiled step instead of timing")


def kernel_passes(model, params, tx, x, y) -> list[str]:
    """The loop fusions of one compiled training step (with the divergence guard) that
    write an array of the first kernel's shape."""
    tx = optax.with_extra_args_support(tx)

    def step(state):
        p, o = state
        loss, g = jax.value_and_grad(lambda p: jnp.mean(engine.cross_entropy(model.apply(p, x), {"y": y}, None)))(p)
        u, o2 = tx.update(g, o, p, task_grads=g)
        ok = jnp.isfinite(loss) & engine.tree_all_finite(g)
        return jax.tree.map(lambda n, old: jnp.where(ok, n, old), (optax.apply_updates(p, u), o2), state)

    # A traced trip count: XLA cannot unroll the loop (which would count each pass twice).
    loop = jax.jit(lambda s, n: jax.lax.fori_loop(0, n, lambda i, s: step(s), s))
    text = loop.lower((params, tx.init(params)), jnp.int32(4)).compile().as_text()
    shape = ",".join(str(d) for d in params["params"]["body"]["fc1"]["kernel"].shape)
    return re.findall(rf"^\s*%(\S+) = f32\[{shape}\]\S* fusion\(", text, re.M)


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
    if _HLO.value:
        for name, tx in chains().items():
            found = kernel_passes(model, params, tx, x[:128], y[:128])
            print(f"{name:<10}{len(found)} kernel-sized fusions: {', '.join(found)}")
        return
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
