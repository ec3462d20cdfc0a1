"""cljax.transforms: quadratic anchor penalty (eq. 6-7) and SI path tracker (eq. 9-10), against hand/NumPy values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import engine
from cljax import transforms as T


def _params():
    return {
        "params": {
            "body": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([0.1, -0.2])},
            "head": {"kernel": jnp.array([[2.0], [-1.0]]), "bias": jnp.array([0.3])},
        }
    }


def _grads(seed: int, like):
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])


def _run(tx, params, grads_seq, lr=0.1, prepare=lambda state: state):
    """Applies ``tx`` for every gradient in ``grads_seq`` (jitted step); returns the params after each step."""
    tx = optax.with_extra_args_support(tx)
    state = engine.set_learning_rate(prepare(tx.init(params)), lr)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, task_grads=grads)
        return optax.apply_updates(params, updates), state

    history = []
    for grads in grads_seq:
        params, state = step(params, state, grads)
        history.append(params)
    return history, state


@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_zero_importance_is_exactly_the_base_optimizer(optimizer, momentum):
    params = _params()
    grads_seq = [_grads(s, params) for s in range(4)]
    base, _ = _run(engine.make_optimizer(optimizer, momentum), params, grads_seq)
    # Anchor far from the params: with F̂ = 0 the penalty must still add nothing at all.
    tx = optax.chain(T.quadratic_anchor_penalty(123.0), engine.make_optimizer(optimizer, momentum))
    penalised, state = _run(
        tx,
        params,
        grads_seq,
        prepare=lambda s: T.replace_anchor_state(s, anchor=jax.tree.map(lambda p: p + 7.0, params)),
    )
    chex.assert_trees_all_equal(T.anchor_state(state).importance, jax.tree.map(jnp.zeros_like, params))
    if optimizer == "sgd":
        chex.assert_trees_all_equal(penalised, base)
    else:  # XLA may fuse Adam's arithmetic differently in the two programs (last-bit differences)
        chex.assert_trees_all_close(penalised, base, rtol=1e-6, atol=1e-8)


def test_zero_importance_penalty_passes_gradients_through_bit_for_bit():
    params = _params()
    grads = _grads(5, params)
    penalty = T.quadratic_anchor_penalty(1e6)
    state = T.replace_anchor_state(penalty.init(params), anchor=jax.tree.map(lambda p: p - 3.0, params))
    updates, _ = jax.jit(penalty.update)(grads, state, params)
    chex.assert_trees_all_equal(updates, grads)


def test_one_sgd_step_on_a_quadratic_matches_the_closed_form():
    # L(θ) = ½·Σ a·θ², so g = a·θ.  θ = [1, 2], a = [1, 2] -> g = [1, 4].
    # θ* = [0.5, 3], F̂ = [2, 0.5], λ = 0.5: penalty gradient λ·F̂·(θ − θ*) = [0.5, -0.25].
    # Eq. 7 with η = 0.1: θ' = θ − η·(g + penalty) = [1 − 0.15, 2 − 0.375] = [0.85, 1.625].
    theta = jnp.array([1.0, 2.0])
    a = jnp.array([1.0, 2.0])
    tx = optax.with_extra_args_support(optax.chain(T.quadratic_anchor_penalty(0.5), optax.sgd(0.1)))
    state = tx.init(theta)
    state = T.replace_anchor_state(state, anchor=jnp.array([0.5, 3.0]), importance=jnp.array([2.0, 0.5]))
    grads = jax.grad(lambda t: 0.5 * jnp.sum(a * t**2))(theta)
    updates, _ = jax.jit(tx.update)(grads, state, theta)
    np.testing.assert_allclose(optax.apply_updates(theta, updates), [0.85, 1.625], rtol=1e-6)


def test_masked_parameters_get_no_penalty_and_no_state():
    params = _params()
    grads = _grads(0, params)
    tx = optax.with_extra_args_support(
        optax.chain(T.quadratic_anchor_penalty(2.0, mask=T.exclude_mask("head")), optax.sgd(1.0))
    )
    state = tx.init(params)
    # Full trees are accepted; the head's values are dropped (masked out).
    state = T.replace_anchor_state(
        state,
        anchor=jax.tree.map(jnp.zeros_like, params),
        importance=jax.tree.map(lambda p: jnp.full(p.shape, 3.0), params),
    )
    stored = T.anchor_state(state)
    assert isinstance(stored.anchor["params"]["head"]["kernel"], optax.MaskedNode)
    assert isinstance(stored.importance["params"]["head"]["bias"], optax.MaskedNode)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    # Head: exactly −g. Body: −(g + 2·3·(θ − 0)).
    chex.assert_trees_all_equal(updates["params"]["head"], jax.tree.map(lambda g: -g, grads["params"]["head"]))
    expected_body = jax.tree.map(lambda g, p: -(g + 6.0 * p), grads["params"]["body"], params["params"]["body"])
    chex.assert_trees_all_close(updates["params"]["body"], expected_body, rtol=1e-6)


def test_replaced_state_keeps_dtypes_and_strong_types_so_nothing_recompiles():
    params = _params()
    tx = optax.with_extra_args_support(
        optax.chain(T.quadratic_anchor_penalty(1.0), engine.make_optimizer("sgd", 0.9), T.si_path_tracker())
    )
    state = engine.set_learning_rate(tx.init(params), 0.01)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, task_grads=grads)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state, _grads(0, params))
    # Python floats and weak-typed arrays in: stored leaves must be strongly typed float32.
    state = T.replace_anchor_state(
        state, anchor=jax.tree.map(lambda p: jnp.full(p.shape, 1.0), params), importance=params
    )
    state = T.reset_si_path(state, jax.tree.map(lambda p: jnp.full(p.shape, 5.0), params))
    for leaf in jax.tree.leaves((T.anchor_state(state), T.si_path_state(state))):
        assert leaf.dtype == jnp.float32 and not leaf.weak_type
    params, state = step(params, state, _grads(1, params))
    assert step._cache_size() == 1
    with pytest.raises(ValueError, match="shape"):
        T.replace_anchor_state(state, importance=jax.tree.map(lambda p: 1.0, params))


def test_si_plain_sgd_one_step_path_is_lr_times_squared_gradient():
    params = _params()
    grads = _grads(3, params)
    lr = 0.05
    _, state = _run(optax.chain(engine.make_optimizer("sgd"), T.si_path_tracker()), params, [grads], lr=lr)
    tracker = T.si_path_state(state)
    chex.assert_trees_all_close(tracker.path, jax.tree.map(lambda g: lr * g**2, grads), rtol=1e-6)
    chex.assert_trees_all_equal(tracker.start, params)


def _numpy_path(params, grads_seq, history):
    """−Σ_t g_t·Δθ_t with Δθ_t read off the parameter trajectory."""
    flat = lambda t: [np.asarray(x, np.float64) for x in jax.tree.leaves(t)]  # noqa: E731
    path = [np.zeros_like(x) for x in flat(params)]
    before = flat(params)
    for grads, after in zip(grads_seq, history, strict=True):
        after = flat(after)
        path = [acc - g * (b1 - b0) for acc, g, b0, b1 in zip(path, flat(grads), before, after, strict=True)]
        before = after
    return path


def test_si_momentum_path_matches_numpy_loop():
    params = _params()
    grads_seq = [_grads(s, params) for s in range(5)]
    lr, beta = 0.1, 0.9
    history, state = _run(
        optax.chain(engine.make_optimizer("sgd", beta), T.si_path_tracker()), params, grads_seq, lr=lr
    )
    # The trajectory itself from a NumPy heavy-ball loop (v = β·v + g; θ −= η·v) ...
    theta = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    velocity = [np.zeros_like(x) for x in theta]
    path = [np.zeros_like(x) for x in theta]
    for grads in grads_seq:
        g = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
        velocity = [beta * v + gi for v, gi in zip(velocity, g, strict=True)]
        delta = [-lr * v for v in velocity]
        path = [acc - gi * d for acc, gi, d in zip(path, g, delta, strict=True)]
        theta = [t + d for t, d in zip(theta, delta, strict=True)]
    for got, want in zip(jax.tree.leaves(T.si_path_state(state).path), path, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(jax.tree.leaves(history[-1]), theta, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # ... and with momentum the path is not the plain-SGD formula η·Σ g².
    plain = sum(np.sum(lr * np.asarray(x) ** 2) for gs in grads_seq for x in jax.tree.leaves(gs))
    assert abs(sum(np.sum(p) for p in path) - plain) > 0.1


def test_si_adam_path_matches_numpy_loop():
    params = _params()
    grads_seq = [_grads(s, params) for s in range(4)]
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    _, state = _run(optax.chain(engine.make_optimizer("adam"), T.si_path_tracker()), params, grads_seq, lr=lr)
    theta = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    path = [np.zeros_like(x) for x in theta]
    for t, grads in enumerate(grads_seq, start=1):
        g = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi**2 for vi, gi in zip(v, g, strict=True)]
        delta = [-lr * (mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + eps) for mi, vi in zip(m, v, strict=True)]
        path = [acc - gi * d for acc, gi, d in zip(path, g, delta, strict=True)]
    for got, want in zip(jax.tree.leaves(T.si_path_state(state).path), path, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_si_path_uses_the_task_gradient_not_the_penalised_one():
    # With an active penalty the base optimizer sees g + λF̂(θ − θ*), but SI's path must use g alone.
    params = _params()
    grads_seq = [_grads(s, params) for s in range(3)]
    tx = optax.with_extra_args_support(
        optax.chain(T.quadratic_anchor_penalty(0.7), engine.make_optimizer("sgd", 0.5), T.si_path_tracker())
    )
    state = engine.set_learning_rate(tx.init(params), 0.1)
    state = T.replace_anchor_state(
        state, anchor=jax.tree.map(jnp.zeros_like, params), importance=jax.tree.map(jnp.ones_like, params)
    )
    history, p = [], params
    for grads in grads_seq:
        updates, state = tx.update(grads, state, p, task_grads=grads)
        p = optax.apply_updates(p, updates)
        history.append(p)
    want = _numpy_path(params, grads_seq, history)
    for got, w in zip(jax.tree.leaves(T.si_path_state(state).path), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7)


def test_si_masked_tracker_ignores_the_head_and_reset_restarts():
    params = _params()
    grads = _grads(1, params)
    tx = optax.chain(engine.make_optimizer("sgd"), T.si_path_tracker(mask=T.exclude_mask("head")))
    history, state = _run(tx, params, [grads], lr=0.5)
    tracker = T.si_path_state(state)
    assert isinstance(tracker.path["params"]["head"]["kernel"], optax.MaskedNode)
    chex.assert_trees_all_close(
        tracker.path["params"]["body"], jax.tree.map(lambda g: 0.5 * g**2, grads["params"]["body"]), rtol=1e-6
    )
    state = T.reset_si_path(state, history[-1])
    tracker = T.si_path_state(state)
    chex.assert_trees_all_equal(tracker.path["params"]["body"], jax.tree.map(jnp.zeros_like, params["params"]["body"]))
    chex.assert_trees_all_equal(tracker.start["params"]["body"], history[-1]["params"]["body"])
    assert isinstance(tracker.start["params"]["head"]["bias"], optax.MaskedNode)
    full = T.unmask(tracker.start, params, fill=-1.0)
    chex.assert_trees_all_equal(
        full["params"]["head"], jax.tree.map(lambda p: -jnp.ones_like(p), params["params"]["head"])
    )


def test_si_batch_importance_is_eq_10_clipped_at_zero():
    tracker = T.SIPathState(path=jnp.array([0.2, -0.1, 0.0, 0.3]), start=jnp.array([1.0, 1.0, 1.0, 2.0]))
    params = jnp.array([1.5, 0.0, 1.0, 2.0])
    # T = [0.5, -1, 0, 0]; F^i = path / (T² + ξ) with ξ = 0.01: [0.2/0.26, -0.1/1.01 -> 0, 0, 0.3/0.01].
    got = T.si_batch_importance(tracker, params, xi=0.01)
    np.testing.assert_allclose(got, [0.2 / 0.26, 0.0, 0.0, 30.0], rtol=1e-6)


def test_missing_params_or_task_grads_raise():
    params = _params()
    penalty = T.quadratic_anchor_penalty(1.0)
    with pytest.raises(ValueError, match="params"):
        penalty.update(params, penalty.init(params))
    tracker = T.si_path_tracker()
    with pytest.raises(ValueError, match="task_grads"):
        tracker.update(params, tracker.init(params), params)
