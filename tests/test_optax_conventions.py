"""optax conventions: the penalty strength as a float or a schedule, the SI tracker under
``optax.masked`` and ``optax.multi_transform`` without flags, and the Flax NNX path (anchors from
``nnx.state(model, nnx.Param)``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cljax import transforms

PARAMS = {"a": jnp.arange(4.0).reshape(2, 2), "b": jnp.array([1.0, -2.0])}


def zeros(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def with_anchor(tx, importance: float = 2.0):
    state = tx.init(PARAMS)
    return transforms.replace_anchor_state(
        state, anchor=zeros(PARAMS), importance=jax.tree.map(lambda p: jnp.full_like(p, importance), PARAMS)
    )


def test_strength_schedule_is_evaluated_at_each_step():
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=10)
    tx = transforms.quadratic_anchor_penalty(schedule)
    state = with_anchor(tx)
    for count in range(3):
        updates, state = tx.update(zeros(PARAMS), state, PARAMS)
        expected = jax.tree.map(lambda p, c=count: float(schedule(c)) * 2.0 * (p - 0.0), PARAMS)
        jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updates, expected)
    assert transforms.anchor_state(state).importance["b"].tolist() == [2.0, 2.0]  # still reachable


def test_constant_schedule_equals_the_float():
    by_float, by_schedule = transforms.quadratic_anchor_penalty(0.3), transforms.quadratic_anchor_penalty(lambda c: 0.3)
    grads = jax.tree.map(lambda p: 0.1 * p + 1.0, PARAMS)
    a, _ = by_float.update(grads, with_anchor(by_float), PARAMS)
    b, _ = by_schedule.update(grads, with_anchor(by_schedule), PARAMS)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)


@pytest.mark.parametrize("order", ["strength first", "importance first", "strength changed after"])
def test_penalty_in_state_keeps_its_cached_product_equal_to_the_float_penalty(order):
    """``anchor_penalty_in_state`` caches λ·F̂; whatever order λ and F̂ are written in, its update
    is bit for bit the penalty with λ as a float (eq. 7), and the cache is λ·F̂."""
    tx = transforms.anchor_penalty_in_state()
    state = tx.init(PARAMS)
    if order == "strength first":
        state = with_anchor_state(transforms.set_hyperparams(state, strength=0.3))
    elif order == "importance first":
        state = transforms.set_hyperparams(with_anchor_state(state), strength=0.3)
    else:
        state = transforms.set_hyperparams(
            with_anchor_state(transforms.set_hyperparams(state, strength=7.0)), strength=0.3
        )
    grads = jax.tree.map(lambda p: 0.1 * p + 1.0, PARAMS)
    by_float = transforms.quadratic_anchor_penalty(0.3)
    expected, _ = by_float.update(grads, with_anchor(by_float), PARAMS)
    updates, _ = tx.update(grads, state, PARAMS)
    jax.tree.map(np.testing.assert_array_equal, updates, expected)
    cached = optax.tree.get(state, "AnchorPenaltyState").weighted
    jax.tree.map(lambda w: np.testing.assert_allclose(w, 0.3 * 2.0, rtol=1e-7), cached)


def with_anchor_state(state):
    return transforms.replace_anchor_state(
        state, anchor=zeros(PARAMS), importance=jax.tree.map(lambda p: jnp.full_like(p, 2.0), PARAMS)
    )


def tracked_path(tx):
    state = tx.init(PARAMS)
    grads = jax.tree.map(lambda p: 0.5 + 0.1 * p, PARAMS)
    _, state = tx.update(grads, state, PARAMS, task_grads=grads)
    return transforms.si_path_state(state).path


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: optax.masked(t, {"a": True, "b": False}),
        lambda t: optax.masked(t, {"a": True, "b": False}, mask_compatible_extra_args=True),
        lambda t: optax.multi_transform({"si": t, "off": optax.identity()}, {"a": "si", "b": "off"}),
    ],
    ids=["masked", "masked_compatible_args", "multi_transform"],
)
def test_si_tracker_under_masks_without_flags(wrap):
    plain = tracked_path(optax.chain(optax.sgd(0.1), transforms.si_path_tracker()))
    wrapped = tracked_path(optax.chain(optax.sgd(0.1), wrap(transforms.si_path_tracker())))
    np.testing.assert_allclose(wrapped["a"], plain["a"], rtol=1e-6)  # −g·Δθ = 0.1·g² on the tracked leaves
    np.testing.assert_allclose(plain["a"], 0.1 * (0.5 + 0.1 * PARAMS["a"]) ** 2, rtol=1e-6)
    assert isinstance(wrapped["b"], optax.MaskedNode)


def test_nnx_anchor_update_from_nnx_state():
    """The NNX path of docs/api.md: params = nnx.state(model, nnx.Param) is the optax tree."""
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    lam, lr = 0.5, 0.1
    tx = optax.chain(transforms.quadratic_anchor_penalty(lam), optax.sgd(lr), transforms.si_path_tracker())
    params = nnx.state(model, nnx.Param)
    opt_state = tx.init(params)
    # Consolidate: the anchor is the model's current weights, importance F = 3.
    importance = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
    opt_state = transforms.replace_anchor_state(opt_state, anchor=params, importance=importance)
    anchor = jax.tree.map(jnp.array, params)
    # Move the model away from the anchor, then one step with zero task gradient: the update is −lr·λ·F·(θ − Θ*).
    nnx.update(model, jax.tree.map(lambda p: p + 1.0, params))
    moved = jax.tree.map(jnp.array, nnx.state(model, nnx.Param))  # a copy: nnx.state shares the model's Variables
    grads = zeros(moved)
    updates, opt_state = tx.update(grads, opt_state, moved, task_grads=grads)
    expected = jax.tree.map(lambda p, a: -lr * lam * 3.0 * (p - a), moved, anchor)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updates, expected)
    nnx.update(model, optax.apply_updates(moved, updates))
    stepped = nnx.state(model, nnx.Param)
    jax.tree.map(lambda s, m, e: np.testing.assert_allclose(s, m + e, rtol=1e-6), stepped, moved, expected)
    assert jax.tree.structure(transforms.anchor_state(opt_state).anchor) == jax.tree.structure(params)
