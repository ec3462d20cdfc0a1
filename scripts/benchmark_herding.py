"""iCaRL herding (Alg. 4): ``icarl.herding_ranks`` (class-centred features, one thin matmul a step)
against Alg. 4 evaluated directly (every candidate mean formed over N x D each step), side by side
in one process, and both against a float64 reference.

    PYTHONPATH=. python scripts/benchmark_herding.py                       # 12,000 x 400, 2 of 10 classes, quota 250
    PYTHONPATH=. python scripts/benchmark_herding.py --reference=False     # timings only (the reference takes ~10 s)
    PYTHONPATH=. python scripts/benchmark_herding.py --against=aebade6     # also herding_ranks as that revision had it

The features are random non-negative rows, L2-normalised (as after a ReLU): nearly parallel, the
case where a form that cancels large terms loses precision. BUILD_NOTES ("Engine and herding
speed") records the output.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cljax.strategies import icarl  # noqa: E402
from scripts.benchmark_revision import module_at_revision  # noqa: E402
from tests.test_rehearsal import herding_reference  # noqa: E402

_ROWS = flags.DEFINE_integer("rows", 12000, "rows N (the batch's examples)")
_DIM = flags.DEFINE_integer("dim", 400, "feature width D")
_CLASSES = flags.DEFINE_integer("classes", 2, "classes among the rows (B_i's)")
_HEAD = flags.DEFINE_integer("num_classes", 10, "classes of the head (C; herding_ranks' num_classes)")
_QUOTA = flags.DEFINE_integer("quota", 250, "exemplars per class")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls of each form")
_AGAINST = flags.DEFINE_string("against", "", "a git revision: time its icarl.herding_ranks beside today's")
_REFERENCE = flags.DEFINE_boolean("reference", True, "also compare both forms' ranks with float64 Alg. 4")


def direct_ranks(f_NxD, labels_N, eligible_N, quota, num_classes):
    """Alg. 4 as written: each step forms (S + f)/(k + 1) − μ for every row (the form before)."""
    labels = jnp.where(eligible_N, labels_N, 0)
    member_CxN = (labels[None, :] == jnp.arange(num_classes)[:, None]) & eligible_N[None, :]
    count = jnp.sum(member_CxN, axis=1)
    mean = jnp.dot(member_CxN.astype(f_NxD.dtype), f_NxD, precision=icarl.HIGHEST) / jnp.maximum(count, 1)[:, None]
    rows = jnp.arange(labels.shape[0])

    def body(k, carry):
        ranks, chosen_sum = carry
        distance = jnp.sum(((chosen_sum[labels] + f_NxD) / (k + 1) - mean[labels]) ** 2, axis=-1)
        distance_CxN = jnp.where(member_CxN & (ranks < 0)[None, :], distance[None, :], jnp.inf)
        row = jnp.argmin(distance_CxN, axis=1)
        found = jnp.isfinite(jnp.min(distance_CxN, axis=1))
        ranks = jnp.where(jnp.any((rows[None, :] == row[:, None]) & found[:, None], axis=0), k, ranks)
        return ranks, chosen_sum + jnp.where(found[:, None], f_NxD[row], 0.0)

    init = (jnp.full(labels.shape, -1, jnp.int32), jnp.zeros_like(mean))
    return jax.lax.fori_loop(0, jnp.minimum(quota, jnp.max(count)), body, init)[0]


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    f = rng.random((_ROWS.value, _DIM.value))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    labels = rng.integers(0, _CLASSES.value, _ROWS.value).astype(np.int32)
    eligible = np.ones(_ROWS.value, bool)
    args = (jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(eligible), jnp.int32(_QUOTA.value))
    forms = {"centred (herding_ranks)": icarl.herding_ranks, "direct (Alg. 4 as written)": direct_ranks}
    if _AGAINST.value:
        forms[f"herding_ranks at {_AGAINST.value}"] = module_at_revision(
            _AGAINST.value, "cljax/strategies/icarl.py", "icarl_before"
        ).herding_ranks
    compiled = {name: jax.jit(fn, static_argnums=4) for name, fn in forms.items()}
    ranks = {name: np.asarray(fn(*args, _HEAD.value)) for name, fn in compiled.items()}  # compiles
    seconds = {name: [] for name in forms}
    for _ in range(_REPEATS.value):
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args, _HEAD.value))
            seconds[name].append(time.perf_counter() - start)
    shape = f"{_ROWS.value} x {_DIM.value} features, {_CLASSES.value} of {_HEAD.value} classes, quota {_QUOTA.value}"
    print(f"{shape}; load average {os.getloadavg()[0]:.2f}")
    for name, s in seconds.items():
        print(f"{name:<28} {min(s):.3f}-{max(s):.3f} s a call")
    centred = ranks["centred (herding_ranks)"]
    for name, r in ranks.items():
        if r is not centred:
            print(f"{name:<28} ranks that differ from herding_ranks': {int(np.sum(r != centred))}")
    if _REFERENCE.value:
        reference = herding_reference(f, labels, eligible, _QUOTA.value, _HEAD.value)
        for name, r in ranks.items():
            print(f"{name:<28} ranks that differ from float64 Alg. 4: {int(np.sum(r != reference))}")


if __name__ == "__main__":
    app.run(main)
