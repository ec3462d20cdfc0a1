"""LwF (sec. 2.1): eq. 2 vs eq. 3 gradients (eq. 4), eq. 5's λ_i schedule, soft targets, and the MT
form (L_cross on the new classes, distillation on the previously learned ones)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cljax import engine
from cljax.models import Classifier, MLPBody
from cljax.strategies import make_strategy
from cljax.strategies.lwf import SOFT_TARGETS, linear_map, lwf_lambda, lwf_loss
from tests.helpers import batch_context, traced


def _eq2_loss(logits, y, soft, lam):
    """Eq. 2: (1 − λ)·CE(ŷ, onehot) + λ·CE(ŷ, ŷ_lwf), the two-term form (per example)."""
    hard = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return (1.0 - lam) * hard + lam * optax.softmax_cross_entropy(logits, soft)


@jax.jit
def _logit_gradients(logits, y, soft, lam):
    g2 = jax.grad(lambda o: jnp.sum(_eq2_loss(o, y, soft, lam)))(logits)
    g3 = jax.grad(lambda o: jnp.sum(lwf_loss(o, {"y": y, SOFT_TARGETS: soft}, {"lambda": lam})))(logits)
    return g2, g3


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lam=st.floats(0.0, 1.0), scale=st.floats(0.1, 20.0))
def test_eq2_and_eq3_have_identical_logit_gradients(seed, lam, scale):
    rng = np.random.default_rng(seed)
    batch, classes = 5, 7  # fixed shapes: one compilation for every example
    logits = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    soft = rng.dirichlet(np.ones(classes), batch).astype(np.float32)
    lam = np.float32(lam)
    g2, g3 = _logit_gradients(logits, y, soft, lam)
    np.testing.assert_allclose(g3, g2, rtol=1e-5, atol=1e-6)
    # Eq. 4: both equal ŷ − ((1 − λ)·onehot + λ·ŷ_lwf), here from a float64 NumPy softmax.
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    target = (1 - lam) * np.eye(classes)[y] + lam * soft
    np.testing.assert_allclose(g3, probs - target, rtol=1e-4, atol=1e-5)


def lam(sizes, map_from, map_to, num_batches: int = 9) -> float:
    """λ of the last batch of ``sizes`` (n_1..n_i), zero-padded to ``num_batches`` as in a stream."""
    padded = np.zeros(num_batches, np.int32)
    padded[: len(sizes)] = sizes
    return float(jax.jit(lwf_lambda)(padded, len(sizes) - 1, jnp.asarray(map_from), jnp.asarray(map_to)))


def test_lambda_schedule_core50_identity_map():
    # CORe50 NC: 10 classes in B_1, then 5 per batch (examples proportional); identity map.
    sizes = [10] + [5] * 8
    got = [lam(sizes[: i + 1], (0.0, 1.0), (0.0, 1.0)) for i in range(len(sizes))]
    np.testing.assert_allclose(got, [0.0, 2 / 3, 3 / 4, 4 / 5, 5 / 6, 6 / 7, 7 / 8, 8 / 9, 9 / 10], rtol=1e-6)


def test_table4_map_and_clipping():
    # [0.66, 0.9] -> [0.45, 0.85]: endpoints map onto endpoints, midpoint onto midpoint.
    assert linear_map(0.66, (0.66, 0.9), (0.45, 0.85)) == pytest.approx(0.45)
    assert linear_map(0.9, (0.66, 0.9), (0.45, 0.85)) == pytest.approx(0.85)
    assert linear_map(0.78, (0.66, 0.9), (0.45, 0.85)) == pytest.approx(0.65)
    # CORe50's B_2: x = 2/3 -> 0.45 + (2/3 − 0.66)·0.4/0.24.
    assert lam([10, 5], (0.66, 0.9), (0.45, 0.85)) == pytest.approx(0.45 + (2 / 3 - 0.66) * 0.4 / 0.24, rel=1e-6)
    # Extrapolation beyond [0, 1] is clipped: λ stays a mixing weight.
    assert lam([10, 80], (0.0, 0.1), (0.0, 1.0)) == 1.0
    assert lam([1, 100], (0.5, 0.9), (0.45, 0.85)) == 0.0


def test_before_batch_soft_targets_and_lambda():
    model = Classifier(MLPBody((8,)), num_classes=5)
    x = jax.random.normal(jax.random.key(0), (7, 4, 1))
    params = model.init(jax.random.key(1), x[:1])
    strategy = make_strategy("lwf")
    state = engine.TrainState(params, (), strategy.init(params))
    mask = jnp.array([True, True, False, True, False])
    hparams = traced("lwf", map_from=(0.0, 1.0), map_to=(0.0, 1.0))
    ctx = batch_context(1, [3] * 6, num_classes=5, hparams=hparams, apply_fn=model.apply, logit_mask=mask)
    ctx = ctx.replace(data={"x": x, "y": jnp.zeros(7, jnp.int32)}, batch_sizes=jnp.array([30, 10, 0], jnp.int32))
    before = jax.jit(strategy.before_batch)
    new_state, extras = before(state, ctx)
    lam = new_state.strategy_state["lambda"]
    assert lam.dtype == jnp.float32 and lam.shape == () and not lam.weak_type
    assert float(lam) == pytest.approx(1 - 10 / 40)
    targets = extras[SOFT_TARGETS]
    assert list(extras) == [SOFT_TARGETS] and targets.shape == (7, 5)
    logits = np.asarray(model.apply(params, x), np.float64)[:, [0, 1, 3]]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(targets[:, [0, 1, 3]], expected, rtol=1e-5)
    assert np.all(np.asarray(targets[:, [2, 4]]) == 0.0)  # classes off the head get exactly nothing
    # B_1: λ_1 = 0 (eq. 5), same keys and shapes.
    first_state, first_extras = before(
        state, ctx.replace(index=jnp.int32(0), batch_sizes=jnp.array([30, 0, 0], jnp.int32))
    )
    assert float(first_state.strategy_state["lambda"]) == 0.0
    assert first_extras.keys() == extras.keys() and first_extras[SOFT_TARGETS].shape == (7, 5)
    assert first_extras[SOFT_TARGETS].dtype == targets.dtype
    # B_1 skips the forward pass: with λ_1 = 0 its loss is bit-identical to the one with real ŷ_lwf.
    logits, y = model.apply(params, x), jnp.array([0, 1, 3, 0, 1, 3, 0])
    first = lwf_loss(logits, {"y": y, SOFT_TARGETS: first_extras[SOFT_TARGETS]}, first_state.strategy_state)
    real = lwf_loss(logits, {"y": y, SOFT_TARGETS: targets}, first_state.strategy_state)
    np.testing.assert_array_equal(first, real)


def test_loss_is_finite_with_masked_logits():
    logits = engine.mask_logits(jnp.array([[1.0, 2.0, 0.5]]), jnp.array([True, False, True]))
    soft = jax.nn.softmax(logits)
    loss = lwf_loss(logits, {"y": jnp.array([0]), SOFT_TARGETS: soft}, {"lambda": jnp.float32(0.5)})
    assert np.isfinite(loss).all()
    grads = jax.grad(lambda o: lwf_loss(o, {"y": jnp.array([0]), SOFT_TARGETS: soft}, {"lambda": 0.5}).sum())(logits)
    assert np.isfinite(grads).all()


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_mt_loss_matches_a_hand_computation():
    """MT (sec. 2.1): B_i's new classes {3, 4}, previously learned {0, 1}, class 2 unseen; λ = 0.3.
    Per example: 0.7·(−log softmax over {3, 4} at y) + 0.3·(−Σ_{j∈{0,1}} ŷ_lwf[j]·log softmax over {0, 1})."""
    logits = np.array([[0.5, -1.0, 3.0, 2.0, 0.1], [1.5, 0.2, -2.0, -0.3, 0.9]], np.float32)
    y = np.array([3, 4], np.int32)
    soft = np.array([[0.8, 0.2, 0, 0, 0], [0.25, 0.75, 0, 0, 0]], np.float32)
    state = {
        "lambda": jnp.float32(0.3),
        "new_classes": jnp.array([False, False, False, True, True]),
        "old_classes": jnp.array([True, True, False, False, False]),
    }
    batch = {"y": jnp.asarray(y), SOFT_TARGETS: jnp.asarray(soft), "mask_index": jnp.zeros(2, jnp.int32)}
    got = np.asarray(lwf_loss(jnp.asarray(logits), batch, state))
    new = _np_log_softmax(logits[:, [3, 4]].astype(np.float64))
    old = _np_log_softmax(logits[:, [0, 1]].astype(np.float64))
    cross = -new[np.arange(2), y - 3]
    distill = -(soft[:, :2] * old).sum(-1)
    np.testing.assert_allclose(got, 0.7 * cross + 0.3 * distill, rtol=1e-5)
    # The unseen class 2 (the largest logit of example 0) plays no part: no gradient reaches it.
    grad = jax.grad(lambda o: jnp.sum(lwf_loss(o, batch, state)))(jnp.asarray(logits))
    assert float(jnp.abs(grad[:, 2]).max()) == 0.0


def test_mt_soft_targets_cover_the_previously_learned_classes_only():
    model = Classifier(MLPBody((8,)), num_classes=5)
    x = jax.random.normal(jax.random.key(0), (7, 4, 1))
    params = model.init(jax.random.key(1), x[:1])
    strategy = make_strategy("lwf")
    assert strategy.multi_head_fit == "seen"
    state = engine.TrainState(params, (), strategy.init(params))
    hparams = traced("lwf", map_from=(0.0, 1.0), map_to=(0.0, 1.0))
    # MT head of B_2 = {3, 4}; B_1 = {0, 1} learned before.
    ctx = batch_context(1, [3, 4] * 3, num_classes=5, hparams=hparams, apply_fn=model.apply, seen=[0, 1])
    ctx = ctx.replace(
        data={"x": x, "y": jnp.zeros(7, jnp.int32), "mask_index": jnp.ones(7, jnp.int32)},
        logit_mask=jnp.array([False, False, False, True, True]),
    )
    before = jax.jit(strategy.before_batch)
    new_state, extras = before(state, ctx)
    np.testing.assert_array_equal(new_state.strategy_state["new_classes"], [False, False, False, True, True])
    np.testing.assert_array_equal(new_state.strategy_state["old_classes"], [True, True, False, False, False])
    logits = np.asarray(model.apply(params, x), np.float64)[:, [0, 1]]
    np.testing.assert_allclose(extras[SOFT_TARGETS][:, :2], np.exp(_np_log_softmax(logits)), rtol=1e-5)
    assert np.all(np.asarray(extras[SOFT_TARGETS][:, 2:]) == 0.0)
    # B_1 has no previously learned class: all-zero targets (and λ_1 = 0), same shapes.
    first = ctx.replace(index=jnp.int32(0), seen_classes=ctx.classes)
    first_state, first_extras = before(state, first)
    assert float(first_state.strategy_state["lambda"]) == 0.0
    assert not np.any(first_state.strategy_state["old_classes"])
    assert np.all(np.asarray(first_extras[SOFT_TARGETS]) == 0.0)


def test_mt_lwf_fits_every_seen_class_while_other_strategies_fit_their_task_head():
    from cljax.experiment import Heads
    from cljax.scenarios import Dataset, nc_scenario

    y = np.repeat(np.arange(6), 2).astype(np.int32)
    x = np.zeros((12, 1, 1, 1), np.float32)
    scenario = nc_scenario(Dataset("t", x, y, x, y, 6), [4, 5, 0, 1, 2, 3], classes_per_batch=2)
    np.testing.assert_array_equal(np.flatnonzero(Heads("multi", scenario, "seen").fit_mask(1)), [0, 1, 4, 5])
    assert Heads("multi", scenario).fit_mask(1).shape == (4, 6)  # the task table (one row per task + all)
