"""Engine: heads and logit masks, fit on a separable problem, compile counts, divergence guard."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import engine
from cljax.experiment import Heads
from cljax.models import Classifier, MLPBody
from cljax.scenarios import Dataset, nc_scenario
from cljax.strategies.base import Strategy


def blobs(num_classes: int = 4, per_class: int = 40, dim: int = 6, seed: int = 0):
    """Well separated Gaussian blobs: one class per corner of a simplex."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * np.eye(num_classes, dim)
    y = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
    x = (centers[y] + 0.3 * rng.normal(size=(len(y), dim))).astype(np.float32)
    return x[:, None, None, :], y


def make_trainer_parts(num_classes: int = 4, batch_size: int = 16):
    model = Classifier(MLPBody((32,)), num_classes)
    tx = engine.make_optimizer("sgd")
    fit = engine.make_fit(model.apply, tx, engine.cross_entropy, batch_size, max_traces=1)
    return model, tx, fit


def init_state(model, tx, x):
    params = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    opt_state = engine.set_learning_rate(tx.init(params), 0.2)
    return engine.TrainState(params, opt_state, ())


def test_expanding_head_equals_smaller_head_softmax():
    logits = jax.random.normal(jax.random.key(1), (5, 10))
    seen = np.zeros(10, bool)
    seen[[2, 5, 7]] = True
    masked = jax.nn.softmax(engine.mask_logits(logits, jnp.asarray(seen)))
    small = jax.nn.softmax(logits[:, [2, 5, 7]])
    chex.assert_trees_all_close(masked[:, [2, 5, 7]], small, rtol=1e-6)
    assert float(jnp.abs(masked[:, ~seen]).max()) == 0.0
    # Gradients w.r.t. masked logits are exactly zero.
    labels = jnp.array([2, 5, 7, 2, 5])
    grad = jax.grad(
        lambda z: optax.softmax_cross_entropy_with_integer_labels(
            engine.mask_logits(z, jnp.asarray(seen)), labels
        ).sum()
    )(logits)
    assert float(jnp.abs(grad[:, ~seen]).max()) == 0.0


def test_heads_masks_maximal_expanding_and_multi_task():
    y = np.repeat(np.arange(6), 2).astype(np.int32)
    x = np.zeros((12, 1, 1, 1), np.float32)
    scenario = nc_scenario(Dataset("t", x, y, x, y, 6), [4, 5, 0, 1, 2, 3], classes_per_batch=2)
    assert Heads("maximal", scenario).train_mask(1).all()
    np.testing.assert_array_equal(np.flatnonzero(Heads("expanding", scenario).train_mask(1)), [0, 1, 4, 5])
    multi = Heads("multi", scenario)
    np.testing.assert_array_equal(np.flatnonzero(multi.train_mask(1)), [0, 1])
    table, index = multi.eval_masks(2)
    # Task oracle: each test example is classified among its own batch's classes.
    for label, row in zip(scenario.test_y, index, strict=True):
        allowed = np.flatnonzero(table[row])
        assert label in allowed and len(allowed) == 2
    table, index = Heads("expanding", scenario).eval_masks(0)
    assert table.shape == (1, 6) and not index.any()


def test_fit_learns_a_separable_problem_and_predict_agrees():
    x, y = blobs()
    model, tx, fit = make_trainer_parts()
    state = init_state(model, tx, x)
    data = {"x": jnp.asarray(engine.pad_to(x, 200)), "y": jnp.asarray(engine.pad_to(y, 200))}
    state, metrics = fit(state, data, len(y), 20, jnp.ones(4, bool), jax.random.key(2))
    assert int(metrics.nonfinite_step) == -1
    assert int(metrics.steps) == 20 * 10  # 160 examples / 16 per step, 20 epochs
    preds = engine.predict(
        model.apply, state.params, jnp.asarray(x), jnp.ones((1, 4), bool), jnp.zeros(len(y), jnp.int32), chunk=64
    )
    cm = engine.confusion_matrix(y, np.asarray(preds), 4)
    assert np.trace(cm) / cm.sum() > 0.95
    assert cm.sum() == len(y)


def test_second_batch_with_same_shapes_compiles_nothing_new():
    x, y = blobs()
    model, tx, fit = make_trainer_parts()
    state = init_state(model, tx, x)
    cap = 200
    first = {"x": jnp.asarray(engine.pad_to(x[:80], cap)), "y": jnp.asarray(engine.pad_to(y[:80], cap))}
    second = {"x": jnp.asarray(engine.pad_to(x[80:], cap)), "y": jnp.asarray(engine.pad_to(y[80:], cap))}
    state, _ = fit(state, first, 80, 3, jnp.ones(4, bool), jax.random.key(0))
    state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, 0.01))
    mask = np.zeros(4, bool)
    mask[2:] = True
    # Other sizes, epochs, learning rate and head: the same executable (max_traces=1 raises otherwise).
    state, _ = fit(state, second, 77, 5, jnp.asarray(mask), jax.random.key(1))
    with pytest.raises(AssertionError, match="traced 2 times"):  # the check can fail: a new shape retraces
        fit(state, {k: v[:100] for k, v in second.items()}, 77, 5, jnp.asarray(mask), jax.random.key(1))


def test_partial_minibatch_padding_rows_do_not_train():
    """Padding rows carry weight 0: garbage in them changes nothing."""
    x, y = blobs(per_class=5)
    model, tx, fit = make_trainer_parts(batch_size=8)
    state = init_state(model, tx, x)
    clean = {"x": jnp.asarray(engine.pad_to(x, 40)), "y": jnp.asarray(engine.pad_to(y, 40))}
    dirty_x = np.array(clean["x"])
    dirty_x[len(y) :] = 100.0
    dirty = {"x": jnp.asarray(dirty_x), "y": clean["y"]}
    a, _ = fit(state, clean, len(y), 2, jnp.ones(4, bool), jax.random.key(3))
    b, _ = fit(state, dirty, len(y), 2, jnp.ones(4, bool), jax.random.key(3))
    chex.assert_trees_all_equal(a.params, b.params)


def test_divergence_stops_at_the_first_nonfinite_step_and_keeps_last_good_params():
    x, y = blobs()
    model, tx, fit = make_trainer_parts()
    state = init_state(model, tx, x)
    state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, 1e30))
    data = {"x": jnp.asarray(engine.pad_to(x, 160)), "y": jnp.asarray(engine.pad_to(y, 160))}
    new_state, metrics = fit(state, data, len(y), 5, jnp.ones(4, bool), jax.random.key(0))
    bad = int(metrics.nonfinite_step)
    assert 0 <= bad < 50 and int(metrics.steps) == bad
    for leaf in jax.tree.leaves(new_state.params):
        assert bool(jnp.all(jnp.isfinite(leaf)))


def test_confusion_matrix_matches_a_loop():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    expected = np.zeros((5, 5), int)
    for t, p in zip(labels, preds, strict=True):
        expected[t, p] += 1
    np.testing.assert_array_equal(engine.confusion_matrix(labels, preds, 5), expected)


def test_default_strategy_record_is_plain_fine_tuning():
    s = Strategy(name="x")
    assert s.default_head == "maximal" and s.training_data == "batch" and s.importance is None


def test_host_step_loop_trains_like_the_compiled_loop_and_compiles_once():
    """loop="host" (for convolutions on CPU) runs the same steps, with the same shuffles and
    keys, from Python: same parameters (to float tolerance), same metrics, one compilation."""
    x, y = blobs()
    model = Classifier(MLPBody((32,)), 4)
    tx = engine.make_optimizer("sgd", 0.9)
    device_fit = engine.make_fit(model.apply, tx, engine.cross_entropy, 16)
    calls = []
    host_fit = engine.make_fit(
        model.apply, tx, engine.cross_entropy, 16, loop="host", progress=lambda d, t: calls.append((d, t)), max_traces=1
    )
    state = init_state(model, tx, x)
    data = {"x": jnp.asarray(engine.pad_to(x, 200)), "y": jnp.asarray(engine.pad_to(y, 200))}
    a, ma = device_fit(state, data, 150, 3, jnp.ones(4, bool), jax.random.key(5))
    b, mb = host_fit(state, data, 150, 3, jnp.ones(4, bool), jax.random.key(5))
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    assert int(ma.steps) == int(mb.steps) == 30 and int(mb.nonfinite_step) == -1
    np.testing.assert_allclose(float(ma.loss), float(mb.loss), rtol=1e-5)
    assert calls[-1] == (30, 30) and len(calls) <= engine.PROGRESS_UPDATES + 1
    host_fit(b, data, 77, 1, jnp.ones(4, bool), jax.random.key(6))  # no new trace (max_traces=1)
    # Divergence: stops in the epoch of the first non-finite step, keeps the last good state.
    hot = state._replace(opt_state=engine.set_learning_rate(state.opt_state, 1e30))
    c, mc = host_fit(hot, data, 150, 5, jnp.ones(4, bool), jax.random.key(0))
    d, md = device_fit(hot, data, 150, 5, jnp.ones(4, bool), jax.random.key(0))
    assert int(mc.nonfinite_step) == int(md.nonfinite_step) >= 0
    assert engine.tree_all_finite(c.params)


def test_auto_step_loop_picks_host_for_convolutions_on_cpu():
    from cljax.experiment import step_loop
    from cljax.models import CifarNetBody

    assert step_loop("device", None, None) == "device"
    mlp = Classifier(MLPBody((8,)), 3)
    conv = Classifier(CifarNetBody(), 3)
    expected = "host" if jax.default_backend() == "cpu" else "device"
    assert step_loop("auto", mlp, (8, 8, 1)) == "device"
    assert step_loop("auto", conv, (32, 32, 3)) == expected


def test_a_single_member_runs_unbatched_and_equals_the_mapped_stack():
    """``vmap_members`` on a stack of one member calls the function on the member itself (no
    batch axis of size 1 on its matmuls) and gives what the mapped stack gives that member."""

    def member(w, x, scale):
        return jnp.tanh(x @ w) * scale

    w = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))  # [R, G, ...]
    x = jax.random.normal(jax.random.key(1), (2, 7, 5))  # [R, ...]
    scale = jnp.array([1.0, 2.0, 3.0])  # [G]
    fn = engine.vmap_members(member, (engine.MEMBER, engine.RUN, engine.GRID))
    stacked = fn(w, x, scale)
    assert stacked.shape == (2, 3, 7, 4)
    one = fn(w[1:, 2:], x[1:], scale[2:])
    assert one.shape == (1, 1, 7, 4)
    np.testing.assert_allclose(one[0, 0], stacked[1, 2], rtol=1e-6)
    jaxpr = jax.make_jaxpr(fn)(w[:1, :1], x[:1], scale[:1])
    (dot,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dot.params["dimension_numbers"][1] == ((), ())  # no batch dimensions
    with pytest.raises(TypeError, match="expected 3 arguments"):
        fn(w, x)


@pytest.mark.parametrize("loop", ["device", "host"])
def test_union_rows_make_each_epoch_a_permutation_of_the_batch_and_the_valid_stored_rows(loop):
    """With ``union_rows``, every epoch of a member visits each real row of B_i and each of that
    member's valid stored rows exactly once, and nothing else; members of one run with different
    stored rows take different numbers of steps. Mini-batches of one row and loss −w·x on one-hot
    rows: each visit of row r adds the learning rate (1) to w[r]."""
    capacity, slots, n, epochs = 6, 4, 5, 2
    width = capacity + slots

    def apply_fn(params, x, train=True, rngs=None):
        return jnp.broadcast_to((x @ params["w"])[:, None], (x.shape[0], 2))

    def union_rows(state):
        return {"x": jnp.eye(width)[capacity:], "y": jnp.zeros((slots,), jnp.int32)}, state.strategy_state

    tx = optax.sgd(1.0)
    fit = engine.make_member_fit(
        apply_fn, tx, lambda logits, *_: -logits[:, 0], 1, loop=loop, union_rows=union_rows, max_traces=1
    )
    valid = jnp.array([[[True, False, True, False], [True, True, True, True]]])  # [R = 1, G = 2, S]
    params = {"w": jnp.zeros((1, 2, width))}
    states = engine.TrainState(params, jax.vmap(jax.vmap(tx.init))(params), valid)
    run_data = {"x": jnp.eye(width)[None, :capacity], "y": jnp.zeros((1, capacity), jnp.int32)}
    ones = jnp.ones((1, 2), jnp.int32)
    new, metrics = fit(
        states, run_data, {}, jnp.array([n]), epochs * ones, jnp.ones((1, 2), bool), jax.random.key(0)[None]
    )
    visits = np.asarray(new.params["w"][0])
    expected_batch = np.where(np.arange(capacity) < n, epochs, 0)
    for g in range(2):
        np.testing.assert_allclose(visits[g], np.concatenate([expected_batch, epochs * np.asarray(valid[0, g])]))
    np.testing.assert_array_equal(metrics.steps[0], [epochs * (n + 2), epochs * (n + 4)])
    assert (metrics.nonfinite_step == -1).all()


def test_any_member_is_one_predicate_for_the_whole_stack_so_a_cond_stays_a_branch():
    """``any_member`` inside ``vmap_members``: true for every member when it holds for one, and the
    ``lax.cond`` on it stays a ``cond`` (a per-member predicate becomes a select that runs both
    branches); for one member, unbatched, it is the member's own flag."""

    def member(w, flag):
        return jax.lax.cond(engine.any_member(flag), lambda: w * 2, lambda: w + 1)

    fn = engine.vmap_members(member, (engine.MEMBER, engine.MEMBER))
    w = jnp.full((2, 3, 4), 3.0)
    one_flag = jnp.zeros((2, 3), bool).at[1, 2].set(True)
    np.testing.assert_array_equal(fn(w, one_flag), 6.0)
    np.testing.assert_array_equal(fn(w, jnp.zeros((2, 3), bool)), 4.0)
    primitives = [e.primitive.name for e in jax.make_jaxpr(fn)(w, one_flag).jaxpr.eqns]
    assert "cond" in primitives and "select_n" not in primitives, primitives
    np.testing.assert_array_equal(fn(w[:1, :1], one_flag[1:, 2:]), 6.0)
    np.testing.assert_array_equal(fn(w[:1, :1], one_flag[:1, :1]), 4.0)
    assert engine.any_member(jnp.bool_(True))  # outside vmap_members: the flag itself
