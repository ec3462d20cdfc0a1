"""EWC (sec. 2.2): Fisher = mean of squared per-example gradients; eq. 8 over three batches; the after_batch hook."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import engine, transforms
from cljax.models import Classifier, MLPBody
from cljax.strategies import make_strategy, strategy_spec
from cljax.strategies.ewc import diagonal_fisher, ewc_consolidate
from tests.helpers import batch_context, traced

MODEL = Classifier(MLPBody((6,)), num_classes=4)
CAPACITY, NUM_EXAMPLES = 11, 9  # padded rows beyond NUM_EXAMPLES must not count
MASK = jnp.array([True, True, True, False])


def _setup():
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (CAPACITY, 3, 1))
    y = jax.random.randint(ky, (CAPACITY,), 0, 3)
    params = MODEL.init(kp, x[:1])
    return params, x, y


def _one_example_grad(params, x, y):
    def loss(p):
        logits = engine.mask_logits(MODEL.apply(p, x[None]), MASK)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0]

    return jax.grad(loss)(params)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_fisher_is_the_mean_of_squared_per_example_gradients(chunk):
    params, x, y = _setup()
    # One example at a time, in float64 NumPy.
    total = None
    for n in range(NUM_EXAMPLES):
        sq = jax.tree.map(lambda g: np.asarray(g, np.float64) ** 2, _one_example_grad(params, x[n], y[n]))
        total = sq if total is None else jax.tree.map(np.add, total, sq)
    expected = jax.tree.map(lambda t: t / NUM_EXAMPLES, total)
    got = diagonal_fisher(MODEL.apply, params, x, y, NUM_EXAMPLES, MASK, jax.random.key(1), chunk=chunk)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-9)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, params)


def test_minibatch_fisher_variant():
    params, x, y = _setup()
    key = jax.random.key(3)
    # One mini-batch holding every real row: F = (mean gradient)², whatever the grouping.
    grads = [_one_example_grad(params, x[n], y[n]) for n in range(NUM_EXAMPLES)]
    mean = jax.tree.map(lambda *g: np.mean(np.stack([np.asarray(gi, np.float64) for gi in g]), 0), *grads)
    got = diagonal_fisher(MODEL.apply, params, x, y, NUM_EXAMPLES, MASK, key, mode="minibatch", chunk=16)
    chex.assert_trees_all_close(got, jax.tree.map(np.square, mean), rtol=1e-4, atol=1e-10)
    # Mini-batches of one pattern: the per-example Fisher.
    per_example = diagonal_fisher(MODEL.apply, params, x, y, NUM_EXAMPLES, MASK, key, chunk=4)
    single = diagonal_fisher(MODEL.apply, params, x, y, NUM_EXAMPLES, MASK, key, mode="minibatch", chunk=1)
    chex.assert_trees_all_close(single, per_example, rtol=1e-5, atol=1e-10)


def test_eq8_sum_average_and_clip_over_three_batches():
    fishers = [np.array([0.9, 0.0, 4.0, 1.0]), np.array([0.3, 0.6, 4.0, 0.0]), np.array([0.0, 0.3, 1.0, 0.2])]
    max_f = 1.5
    fisher_sum = jnp.zeros(4)
    # Hand values: sums [0.9,0,4,1] -> [1.2,0.6,8,1] -> [1.2,0.9,9,1.2];
    # F̂ = min(F/i, 1.5): [0.9,0,1.5,1], [0.6,0.3,1.5,0.5], [0.4,0.3,1.5,0.4].
    expected_hat = [[0.9, 0.0, 1.5, 1.0], [0.6, 0.3, 1.5, 0.5], [0.4, 0.3, 1.5, 0.4]]
    for i, (fisher, want) in enumerate(zip(fishers, expected_hat, strict=True), start=1):
        fisher_sum, f_hat = ewc_consolidate(fisher_sum, jnp.asarray(fisher, jnp.float32), i, max_f)
        np.testing.assert_allclose(f_hat, want, rtol=1e-6)
    np.testing.assert_allclose(fisher_sum, [1.2, 0.9, 9.0, 1.2], rtol=1e-6)
    assert fisher_sum.dtype == jnp.float32 and not fisher_sum.weak_type


def test_after_batch_sets_anchor_and_clipped_importance():
    params, x, y = _setup()
    strategy = make_strategy("ewc", {"fisher": "per_example", "fisher_batch_size": 4})
    tx = strategy.transform(engine.make_optimizer("sgd"))
    state = engine.TrainState(params, tx.init(params), strategy.init(params))
    ctx = batch_context(1, num_classes=4, hparams=traced("ewc", strength=2.0, max_f=0.01), apply_fn=MODEL.apply, tx=tx)
    ctx = ctx.replace(
        data={"x": x, "y": y},
        num_examples=jnp.int32(NUM_EXAMPLES),
        logit_mask=MASK,
    )
    new = jax.jit(strategy.after_batch)(state, ctx)
    fisher = diagonal_fisher(MODEL.apply, params, x, y, NUM_EXAMPLES, MASK, ctx.key, chunk=4)
    # Second batch (index 1): F̂ = clip(F / 2, max_F).
    expected_hat = jax.tree.map(lambda f: jnp.minimum(f / 2, 0.01), fisher)
    anchor = transforms.anchor_state(new.opt_state)
    chex.assert_trees_all_close(anchor.importance, expected_hat, rtol=1e-6)
    chex.assert_trees_all_equal(anchor.anchor, params)
    chex.assert_trees_all_close(new.strategy_state["fisher_sum"], fisher, rtol=1e-6)
    assert any(bool(jnp.any(f == 0.01)) for f in jax.tree.leaves(anchor.importance))  # the clip is exercised
    report = strategy.importance(new)
    chex.assert_trees_all_equal(report["F_hat"], anchor.importance)
    chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
    # before_batch writes this run's λ (a traced value) into the penalty's state.
    started, extras = strategy.before_batch(new, ctx)
    assert float(optax.tree.get(started.opt_state, "strength")) == 2.0 and extras == {}


def test_warns_when_the_penalty_can_overshoot():
    values = {"strength": 200.0, "max_f": 0.1, "lr": 0.1}
    with pytest.warns(RuntimeWarning, match=r"η=0\.1.*λ=200.*max_f=0\.1"):
        strategy_spec("ewc").check(values)
    with pytest.warns(RuntimeWarning, match="max_f"):
        strategy_spec("si").check(values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy_spec("ewc").check({**values, "strength": 10.0})  # η·λ·max_F = 0.1
        strategy_spec("si").check({"strength": 5e7, "max_f": 1e-3, "lr": 2e-5})  # 1 up to float rounding
