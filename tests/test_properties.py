"""Property tests (hypothesis) over random pytree shapes and values: the penalty's gradient, the SI
path under SGD, momentum and Adam, CWR+'s mean-shift and CWR's masked copy into cw."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cljax import transforms
from cljax.strategies import head

SETTINGS = settings(max_examples=25, deadline=None)
finite = st.floats(-3.0, 3.0, allow_nan=False, width=32)


@st.composite
def pytrees(draw, count: int = 1):
    """``count`` float32 trees of one random structure (1-3 leaves of random shapes)."""
    shapes = draw(st.lists(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), min_size=1, max_size=3))
    trees = []
    for _ in range(count):
        leaves = [draw(hnp.arrays(np.float32, shape, elements=finite)) for shape in shapes]
        trees.append({f"layer{i}": {"w": leaf} for i, leaf in enumerate(leaves)})
    return trees


def tree_map(fn, *trees):
    return jax.tree.map(lambda *leaves: np.asarray(fn(*[np.asarray(x, np.float64) for x in leaves])), *trees)


def assert_tree_close(a, b, rtol=1e-5, atol=1e-6) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


@SETTINGS
@given(trees=pytrees(count=4), strength=st.floats(1e-3, 1e3))
def test_penalty_adds_lambda_times_importance_times_distance_to_the_anchor(trees, strength):
    """Eq. 6-7: the gradient of (λ/2)·Σ F̂(θ − θ*)² is λ·F̂·(θ − θ*), added to the incoming gradient."""
    grads, params, anchor, importance = trees
    importance = jax.tree.map(np.abs, importance)
    tx = transforms.quadratic_anchor_penalty(strength)
    state = transforms.replace_anchor_state(tx.init(params), anchor=anchor, importance=importance)
    updates, _ = tx.update(grads, state, params)
    expected = tree_map(lambda g, p, a, f: g + strength * f * (p - a), grads, params, anchor, importance)
    assert_tree_close(updates, expected, rtol=1e-4, atol=1e-4 * strength)
    # The same through the strength held in the optimizer state (what hyper-grids use).
    in_state = transforms.anchor_penalty_in_state()
    state = transforms.replace_anchor_state(in_state.init(params), anchor=anchor, importance=importance)
    updates, _ = in_state.update(grads, transforms.set_hyperparams(state, strength=strength), params)
    assert_tree_close(updates, expected, rtol=1e-4, atol=1e-4 * strength)


def numpy_path(grads_per_step, params, optimizer: str, lr: float):
    """Σ −g·Δθ with Δθ the update each optimizer applies (NumPy float64 loop)."""
    theta = tree_map(lambda p: p, params)
    path = tree_map(np.zeros_like, params)
    trace = tree_map(np.zeros_like, params)
    m, v = tree_map(np.zeros_like, params), tree_map(np.zeros_like, params)
    for t, g in enumerate(grads_per_step, start=1):
        if optimizer == "sgd":
            delta = tree_map(lambda gi: -lr * gi, g)
        elif optimizer == "momentum":
            trace = tree_map(lambda tr, gi: 0.9 * tr + gi, trace, g)
            delta = tree_map(lambda tr: -lr * tr, trace)
        else:  # adam, optax's defaults
            m = tree_map(lambda mi, gi: 0.9 * mi + 0.1 * gi, m, g)
            v = tree_map(lambda vi, gi: 0.999 * vi + 0.001 * gi**2, v, g)
            b1, b2 = 1 - 0.9**t, 1 - 0.999**t  # bias corrections
            delta = tree_map(lambda mi, vi, b1=b1, b2=b2: -lr * (mi / b1) / (np.sqrt(vi / b2) + 1e-8), m, v)
        path = tree_map(lambda acc, gi, d: acc - gi * d, path, g, delta)
        theta = tree_map(lambda p, d: p + d, theta, delta)
    return path, theta


@SETTINGS
@given(trees=pytrees(count=4), optimizer=st.sampled_from(["sgd", "momentum", "adam"]))
def test_si_path_is_minus_gradient_times_applied_update(trees, optimizer):
    """Eq. 9-10's path Σ −g·Δθ accumulates the update the optimizer applies, for any optimizer."""
    params, *grads_per_step = trees
    lr = 0.05
    base = {"sgd": optax.sgd(lr), "momentum": optax.sgd(lr, momentum=0.9), "adam": optax.adam(lr)}[optimizer]
    tx = optax.chain(base, transforms.si_path_tracker())
    state, theta = tx.init(params), params
    for g in grads_per_step:
        updates, state = tx.update(g, state, theta, task_grads=g)
        theta = optax.apply_updates(theta, updates)
    path, expected_theta = numpy_path(grads_per_step, params, optimizer, lr)
    assert_tree_close(transforms.si_path_state(state).path, path, rtol=1e-4, atol=1e-5)
    assert_tree_close(theta, expected_theta, rtol=1e-4, atol=1e-5)


@st.composite
def heads(draw):
    """A head kernel [D, C] with random values and a random non-empty set of present classes."""
    d, c = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    kernel = draw(hnp.arrays(np.float32, (d, c), elements=finite))
    present = draw(hnp.arrays(np.bool_, (c,)).filter(lambda p: p.any()))
    return kernel, present


@SETTINGS
@given(case=heads())
def test_mean_shift_gives_zero_mean_over_the_batch_classes_and_leaves_the_others(case):
    """CWR+ (Alg. 2 line 10): consolidated columns of the batch's classes have zero mean; every other
    column of cw stays exactly as it was; the bias stays zero."""
    kernel, present = case
    d, c = kernel.shape
    old = {"kernel": jnp.full((d, c), 7.0), "bias": jnp.zeros(c)}
    state = head.HeadState(old, jnp.zeros(c, jnp.float32))
    counts = jnp.asarray(present, jnp.float32) * 3.0
    new = head.consolidate_mean_shift(
        state, {"params": {"head": {"kernel": kernel, "bias": jnp.ones(c)}}}, counts, "batch"
    )
    cw = np.asarray(new.cw["kernel"], np.float64)
    np.testing.assert_allclose(cw[:, present].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(cw[:, present], kernel[:, present] - kernel[:, present].mean(), atol=1e-5)
    np.testing.assert_array_equal(cw[:, ~present], 7.0)
    np.testing.assert_array_equal(np.asarray(new.cw["bias"]), 0.0)


@SETTINGS
@given(case=heads(), weight=st.floats(0.0, 3.0))
def test_cwr_copies_scaled_columns_of_present_classes_only(case, weight):
    """CWR (Alg. 1 line 10): cw[j] = w_i·tw[j] for the batch's classes j (kernel and bias); the other
    columns are untouched."""
    kernel, present = case
    d, c = kernel.shape
    bias = np.arange(c, dtype=np.float32)
    old = {"kernel": jnp.full((d, c), -5.0), "bias": jnp.full(c, -5.0)}
    state = head.HeadState(old, jnp.zeros(c, jnp.float32))
    scaled = {"kernel": jnp.asarray(weight * kernel), "bias": jnp.asarray(weight * bias)}
    new = head.consolidate(state, scaled, jnp.asarray(present, jnp.float32))
    np.testing.assert_allclose(np.asarray(new.cw["kernel"])[:, present], (weight * kernel)[:, present], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.cw["bias"])[present], (weight * bias)[present], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(new.cw["kernel"])[:, ~present], -5.0)
    np.testing.assert_array_equal(np.asarray(new.cw["bias"])[~present], -5.0)
    np.testing.assert_array_equal(np.asarray(new.past_counts), present.astype(np.float32))
