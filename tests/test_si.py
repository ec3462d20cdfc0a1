"""SI (sec. 2.3): the strategy's hooks over several batches on a quadratic loss vs a NumPy eq. 9-11."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import engine, transforms
from cljax.strategies import make_strategy
from cljax.strategies.penalty import si_consolidate
from tests.helpers import batch_context, traced

# A quadratic task loss ½·Σ a·(θ − c_b)² per batch b; numbers chosen so that eq. 10's path turns
# negative for one weight (momentum carried over from the previous batch raises its task loss),
# and eq. 11's clip at max_F and unclipped values both occur.
THETA0 = np.array([0.0, 0.9, -0.7, 0.9])
CURVATURE = np.array([1.0, 1.1, 1.7, 1.1])
TARGETS = [np.array([0.1, -0.9, 0.5, 0.1]), np.array([-0.3, 0.6, -0.4, -0.1]), np.array([-0.7, -0.2, -0.6, -0.5])]
STEPS, LR, MOMENTUM = 3, 0.3, 0.9
HP = {"strength": 2.0, "xi": 0.1, "w_first": 0.5, "w_rest": 2.0, "max_f": 1.0, "lr": LR}


def _numpy_si():
    """Eq. 7 (SGD with momentum on task + penalty gradient), eq. 9-10 path and eq. 11, per batch."""
    theta, anchor = THETA0.copy(), THETA0.copy()
    f, f_hat, velocity = np.zeros(4), np.zeros(4), np.zeros(4)
    records = []
    for b, c in enumerate(TARGETS):
        start, path = theta.copy(), np.zeros(4)
        for _ in range(STEPS):
            g = CURVATURE * (theta - c)
            velocity = MOMENTUM * velocity + g + HP["strength"] * f_hat * (theta - anchor)
            delta = -LR * velocity
            path -= g * delta
            theta = theta + delta
        batch_importance = path / ((theta - start) ** 2 + HP["xi"])
        f = f + (HP["w_first"] if b == 0 else HP["w_rest"]) * np.maximum(batch_importance, 0.0)
        f_hat = np.minimum(f, HP["max_f"])
        anchor = theta.copy()
        records.append({"path": path, "raw": batch_importance, "F": f.copy(), "F_hat": f_hat.copy(), "theta": theta})
    return records


def _ctx(index: int):
    return batch_context(index, num_classes=1, hparams=traced("si", **{k: v for k, v in HP.items() if k != "lr"}))


def test_si_importance_over_three_batches_matches_numpy_eq_10_11():
    expected = _numpy_si()
    # The test exercises what it claims: a negative path (clipped to 0) and a saturated F̂.
    assert any((r["raw"] < 0).any() for r in expected)
    assert any((r["F"] > HP["max_f"]).any() for r in expected)

    strategy = make_strategy("si")
    tx = optax.with_extra_args_support(strategy.transform(engine.make_optimizer("sgd", MOMENTUM)))
    params = jnp.asarray(THETA0, jnp.float32)
    state = engine.TrainState(params, engine.set_learning_rate(tx.init(params), LR), strategy.init(params))

    @jax.jit
    @functools.partial(engine.limit_traces, n=1)
    def step(state, target):
        grads = jax.grad(lambda p: 0.5 * jnp.sum(CURVATURE * (p - target) ** 2))(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, task_grads=grads)
        return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    for b, (target, want) in enumerate(zip(TARGETS, expected, strict=True)):
        state, _ = jax.jit(strategy.before_batch)(state, _ctx(b))
        chex.assert_trees_all_equal(transforms.si_path_state(state.opt_state).start, state.params)
        for _ in range(STEPS):
            state = step(state, jnp.asarray(target, jnp.float32))
        np.testing.assert_allclose(transforms.si_path_state(state.opt_state).path, want["path"], rtol=1e-4, atol=1e-6)
        state = jax.jit(strategy.after_batch)(state, _ctx(b))
        np.testing.assert_allclose(state.params, want["theta"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.strategy_state["importance"], want["F"], rtol=1e-4, atol=1e-6)
        anchor = transforms.anchor_state(state.opt_state)
        np.testing.assert_allclose(anchor.importance, want["F_hat"], rtol=1e-4, atol=1e-6)
        chex.assert_trees_all_equal(anchor.anchor, state.params)
    report = strategy.importance(state)
    chex.assert_trees_all_equal(report["F_hat"], transforms.anchor_state(state.opt_state).importance)


def test_si_consolidate_is_eq_11_and_keeps_masked_leaves():
    masked = optax.MaskedNode()
    importance = {"body": jnp.array([0.2, 0.9]), "head": masked}
    batch = {"body": jnp.array([1.0, 0.5]), "head": masked}
    new, f_hat = si_consolidate(importance, batch, 0.3, 1.0)
    np.testing.assert_allclose(new["body"], [0.5, 1.05], rtol=1e-6)
    np.testing.assert_allclose(f_hat["body"], [0.5, 1.0], rtol=1e-6)
    assert isinstance(new["head"], optax.MaskedNode) and isinstance(f_hat["head"], optax.MaskedNode)
    assert new["body"].dtype == jnp.float32 and not new["body"].weak_type
