"""CWR, CWR+ and AR1 (Alg. 1-3): consolidated head, mean-shift, zero init, frozen Θ̄, classes seen
again, and AR1's SI restricted to the shared weights."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cljax import engine, experiment, transforms
from cljax.config import TRAINING_FIELDS, ConfigError, base_config, strategy_hparams, validate
from cljax.engine import TrainState
from cljax.scenarios import IncrementalBatch, Scenario, build_scenario, load_dataset
from cljax.strategies import head as head_lib
from cljax.strategies import make_strategy
from cljax.strategies.head import mean_shift
from tests import helpers

ARCHITECTURAL = ("cwr", "cwr_plus", "ar1")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_config(strategy: str, **overrides) -> ml_collections.ConfigDict:
    config = base_config()
    config.strategies = strategy
    config.hidden_sizes = (32,)
    config.num_runs = 1
    config.epochs_first = 2
    config.epochs = 2
    for field in TRAINING_FIELDS:  # the top-level training fields below apply to the strategy too
        config[strategy][field] = None
    for field, value in overrides.items():
        config[field] = value
    return config


def build_job(config, dataset, name: str | None = None, **program_changes) -> experiment.StrategyJob:
    job = experiment.StrategyJob.build(config, name or config.strategies, dataset)
    if program_changes:
        job = dataclasses.replace(job, program=dataclasses.replace(job.program, **program_changes))
    return job


def run_logged(config, dataset, scenario=None, job=None):
    """One run of ``scenario`` (default: run 0 of ``config``) stage by stage; ``job`` reuses compiled programs."""
    job = job or build_job(config, dataset)
    scenario = scenario or build_scenario(config, 0, dataset)
    return job, helpers.run_logged(job, scenario), scenario


def shared_config(strategy: str) -> ml_collections.ConfigDict:
    # Momentum would keep moving Θ̄ under a gradient-zeroing mask; w_1 != w_i shows the scaling.
    config = tiny_config(strategy, momentum=0.9)
    config.cwr.w_first, config.cwr.w_rest = 1.25, 0.5
    config.ar1.update(strength=100.0, max_f=0.2, w_first=0.5, w_rest=2.0)
    return config


@pytest.fixture(scope="module")
def jobs(digits):
    """One job per strategy, shared by the tests below (its programs compile once for all of them);
    max_traces=1: a second run, another class order or a resume must not compile anything again."""
    return {name: build_job(shared_config(name), digits, max_traces=1) for name in ARCHITECTURAL}


def run_shared(jobs, digits, strategy, scenario=None):
    return run_logged(shared_config(strategy), digits, scenario, jobs[strategy])


states = helpers.stage


def consolidated_head(state: TrainState) -> head_lib.HeadState:
    return state.strategy_state.head if hasattr(state.strategy_state, "importance") else state.strategy_state


def np_tree(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("strategy", ARCHITECTURAL)
def test_never_seen_classes_stay_exactly_zero(jobs, digits, strategy):
    _, log, scenario = run_shared(jobs, digits, strategy)
    for i, state in enumerate(states(log, "consolidated")):
        cw = np_tree(consolidated_head(state).cw)
        unseen = sorted(set(range(10)) - set(scenario.seen_classes(i)))
        assert len(unseen) == 10 - 2 * (i + 1)
        assert np.all(cw["kernel"][:, unseen] == 0) and np.all(cw["bias"][unseen] == 0)
        # ... while every seen class got nonzero weights.
        assert np.all(np.any(cw["kernel"][:, scenario.seen_classes(i)] != 0, axis=0))


@pytest.mark.parametrize("strategy", ["cwr_plus", "ar1"])
def test_mean_shift_consolidated_rows_have_zero_mean(jobs, digits, strategy):
    _, log, scenario = run_shared(jobs, digits, strategy)
    for i, state in enumerate(states(log, "consolidated")):
        cw = consolidated_head(state).cw
        kernel = np.asarray(cw["kernel"])
        batch_weights = kernel[:, list(scenario.batches[i].classes)]
        assert np.abs(batch_weights).max() > 1e-3  # trained, not trivially zero
        np.testing.assert_allclose(batch_weights.mean(), 0.0, atol=1e-7)
        assert np.all(np.asarray(cw["bias"]) == 0)


def test_mean_shift_matches_numpy_for_both_averages():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 6)).astype(np.float32)
    present = np.array([False, True, False, True, True, False])
    tw = {"kernel": jnp.asarray(kernel), "bias": jnp.ones(6)}
    batch = mean_shift(tw, jnp.asarray(present), "batch")
    np.testing.assert_allclose(batch["kernel"], kernel - kernel[:, present].mean(), rtol=1e-6, atol=1e-6)
    every = mean_shift(tw, jnp.asarray(present), "all")
    np.testing.assert_allclose(every["kernel"], kernel - kernel.mean(), rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(batch["bias"]) == 0)


@pytest.mark.parametrize("strategy", ["cwr", "cwr_plus"])
def test_shared_weights_bitwise_frozen_after_first_batch(jobs, digits, strategy):
    # Trained with momentum 0.9: a gradient-zeroing mask would let momentum move Θ̄ after B_1.
    _, log, _ = run_shared(jobs, digits, strategy)
    initial = np_tree(states(log, "initial")[0].params["params"]["body"])
    bodies = [np_tree(s.params["params"]["body"]) for s in states(log, "consolidated")]
    assert not np.array_equal(initial["fc1"]["kernel"], bodies[0]["fc1"]["kernel"])  # B_1 trains Θ̄
    for body in bodies[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, strict=True), bodies[0], body)
    # ... while the head did learn on every batch.
    trained = states(log, "trained")
    for state, reset in zip(trained[1:], states(log, "reset")[1:], strict=True):
        assert not np.array_equal(state.params["params"]["head"]["kernel"], reset.params["params"]["head"]["kernel"])


@pytest.mark.parametrize("strategy", ARCHITECTURAL)
def test_no_recompilation_and_consolidation_keeps_shapes_and_dtypes(jobs, digits, strategy):
    _, log, _ = run_shared(jobs, digits, strategy)
    run_shared(jobs, digits, strategy, build_scenario(shared_config(strategy), 1, digits))  # another order
    program = jobs[strategy].program  # max_traces=1 raised if any stage compiled again
    assert program._fit.compiled.__wrapped__.traces == 1  # CWR, CWR+: B_1 (body and head); AR1: every batch
    head_fit_traces = program._head_fit.compiled.__wrapped__.traces
    assert head_fit_traces == (0 if strategy == "ar1" else 1)  # CWR, CWR+: cached features
    first = states(log, "reset")[0]
    for state in states(log, "consolidated") + states(log, "reset"):
        chex.assert_trees_all_equal_shapes_and_dtypes(state.strategy_state, first.strategy_state)
        chex.assert_trees_all_equal_shapes_and_dtypes(state.params, first.params)


def test_cwr_scales_the_batch_weights_by_w_i(jobs, digits):
    _, log, scenario = run_shared(jobs, digits, "cwr")  # w_1 = 1.25, w_i = 0.5
    cw = np.zeros((32, 10), np.float32)
    for i, (trained, done) in enumerate(zip(states(log, "trained"), states(log, "consolidated"), strict=True)):
        classes = list(scenario.batches[i].classes)
        tw = np.asarray(trained.params["params"]["head"]["kernel"])
        cw[:, classes] = (1.25 if i == 0 else 0.5) * tw[:, classes]
        np.testing.assert_array_equal(np.asarray(done.strategy_state.cw["kernel"]), cw)
    resets = [np.asarray(s.params["params"]["head"]["kernel"]) for s in states(log, "reset")]
    assert 0.005 < resets[1].std() < 0.015 and not np.array_equal(resets[1], resets[2])  # N(0, 0.01²), fresh


def set_kernel(state: TrainState, kernel) -> TrainState:
    tw = {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.zeros(4, jnp.float32)}
    return state._replace(params=head_lib.with_head(state.params, tw))


def test_algorithm_2_two_batches_by_hand():
    """D = 2 penultimate units, C = 4 classes; B_1 = {0, 1}, B_2 = {2, 3}; tw values stand for training."""
    strategy = make_strategy("cwr_plus", {"avg": "batch"})
    tx = strategy.transform(engine.make_optimizer("sgd"))
    params = {"params": {"body": {"w": jnp.ones(3)}, "head": {"kernel": jnp.ones((2, 4)), "bias": jnp.ones(4)}}}
    state = TrainState(params, tx.init(params), strategy.init(params))

    def context(index: int, y: list[int]):
        return helpers.batch_context(index, y, num_classes=4, tx=tx)

    np.testing.assert_array_equal(state.strategy_state.cw["kernel"], np.zeros((2, 4)))  # line 1: cw = 0

    ctx1 = context(0, [0, 0, 1])
    state, _ = strategy.before_batch(state, ctx1)
    assert not bool(transforms.frozen_body(state.opt_state))  # B_1 trains Θ̄ too
    np.testing.assert_array_equal(state.params["params"]["head"]["kernel"], np.zeros((2, 4)))  # line 5: tw = 0
    np.testing.assert_array_equal(state.params["params"]["head"]["bias"], np.zeros(4))
    state = set_kernel(state, [[1, 3, -1, -1], [2, 2, -1, -2]])
    state = strategy.after_batch(state, ctx1)
    # avg(tw) over classes 0 and 1 = (1 + 3 + 2 + 2) / 4 = 2  ->  cw[0] = (-1, 0), cw[1] = (1, 0).
    np.testing.assert_array_equal(state.strategy_state.cw["kernel"], [[-1, 1, 0, 0], [0, 0, 0, 0]])

    ctx2 = context(1, [2, 3, 3, 2])
    state, _ = strategy.before_batch(state, ctx2)
    assert bool(transforms.frozen_body(state.opt_state))  # Θ̄ frozen from B_2 on (Alg. 2 lines 7-8)
    np.testing.assert_array_equal(state.params["params"]["head"]["kernel"], np.zeros((2, 4)))
    state = set_kernel(state, [[-2, -2, 4, 0], [-1, -3, 2, 2]])
    state = strategy.after_batch(state, ctx2)
    # avg over classes 2 and 3 = (4 + 0 + 2 + 2) / 4 = 2  ->  cw[2] = (2, 0), cw[3] = (-2, 0); 0, 1 kept.
    np.testing.assert_array_equal(state.strategy_state.cw["kernel"], [[-1, 1, 2, -2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(state.strategy_state.cw["bias"], np.zeros(4))
    np.testing.assert_array_equal(state.strategy_state.past_counts, [2, 1, 2, 2])
    evaluated = strategy.eval_params(state)
    np.testing.assert_array_equal(evaluated["params"]["head"]["kernel"], [[-1, 1, 2, -2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(evaluated["params"]["body"]["w"], np.ones(3))

    # A third batch: class 1 (1 example in B_1) comes back with 2 examples, w_past = sqrt(1 / 2).
    ctx3 = context(2, [1, 1])
    state, _ = strategy.before_batch(state, ctx3)
    np.testing.assert_array_equal(state.params["params"]["head"]["kernel"], [[0, 1, 0, 0], [0, 0, 0, 0]])  # from cw
    state = set_kernel(state, [[9, 5, 9, 9], [9, 1, 9, 9]])
    state = strategy.after_batch(state, ctx3)
    # avg over class 1 = 3 -> new = (2, -2); cw[1] = ((1, 0)·w + (2, -2)) / (w + 1).
    w = np.sqrt(1 / 2)
    expected = (np.array([1.0, 0.0]) * w + np.array([2.0, -2.0])) / (w + 1)
    np.testing.assert_allclose(np.asarray(state.strategy_state.cw["kernel"])[:, 1], expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.strategy_state.cw["kernel"])[:, [0, 2, 3]], [[-1, 2, -2], [0, 0, 0]])


def test_cwr_plus_second_batch_is_one_sgd_step_from_zero_on_frozen_features(digits):
    """B_2 trained for one full-batch SGD step from tw = 0 (bias 0): the logits are all zero, so
    tw = η/n · Fᵀ(Y − 1/C), F the frozen body's features; then mean-shift over B_2's classes."""
    config = tiny_config("cwr_plus", batch_size=1024, epochs=1, lr=0.5, num_batches=2)
    job, log, scenario = run_logged(config, digits)
    after_b1 = states(log, "consolidated")[0]
    assert np.all(np.asarray(after_b1.params["params"]["head"]["bias"]) == 0)  # bias held at zero in B_1 too
    batch = scenario.batches[1]
    feats = np.asarray(job.program.apply_fn(after_b1.params, jnp.asarray(batch.x), method="features"), np.float64)
    onehot = np.eye(10)[batch.y]
    tw = 0.5 / len(batch.y) * feats.T @ (onehot - 1 / 10)
    trained = states(log, "trained")[1]
    np.testing.assert_allclose(trained.params["params"]["head"]["kernel"], tw, rtol=2e-4, atol=1e-6)
    classes = list(batch.classes)
    cw = np.asarray(states(log, "consolidated")[1].strategy_state.cw["kernel"])
    np.testing.assert_allclose(cw[:, classes], tw[:, classes] - tw[:, classes].mean(), rtol=2e-4, atol=1e-6)


def repeating_scenario(dataset) -> Scenario:
    """B_1 = 30 examples of class 0 and 20 of class 1; B_2 = 60 other examples of class 1 and 40 of class 2."""

    def take(label, start, count):
        idx = np.flatnonzero(dataset.train_y == label)[start : start + count]
        return dataset.train_x[idx], dataset.train_y[idx]

    def batch(parts, task_id):
        xs, ys = zip(*parts, strict=True)
        y = np.concatenate(ys).astype(np.int32)
        return IncrementalBatch(np.concatenate(xs), y, tuple(sorted(set(y.tolist()))), task_id)

    b1 = batch([take(0, 0, 30), take(1, 0, 20)], 0)
    b2 = batch([take(1, 20, 60), take(2, 0, 40)], 1)
    return Scenario("digits-ni", (b1, b2), dataset.test_x, dataset.test_y, 10, tuple(range(10)))


@pytest.mark.parametrize("strategy", ARCHITECTURAL)
def test_class_seen_again_keeps_its_past_weights(digits, strategy):
    # A 2-batch stream (the shared jobs compile for 5): a job of its own.
    _, log, _ = run_logged(shared_config(strategy), digits, repeating_scenario(digits))
    cw1 = np.asarray(consolidated_head(states(log, "consolidated")[0]).cw["kernel"])
    reset2 = np.asarray(states(log, "reset")[1].params["params"]["head"]["kernel"])
    tw2 = np.asarray(states(log, "trained")[1].params["params"]["head"]["kernel"])
    done = consolidated_head(states(log, "consolidated")[1])
    if strategy != "cwr":  # the authors' CWR*/AR1*: a class seen again starts from its cw
        np.testing.assert_array_equal(reset2[:, 1], cw1[:, 1])
        np.testing.assert_array_equal(np.delete(reset2, 1, axis=1), 0)
        new = tw2[:, [1, 2]] - tw2[:, [1, 2]].mean()
    else:
        new = 0.5 * tw2[:, [1, 2]]  # w_i
    w_past = np.sqrt(20 / 60)
    np.testing.assert_allclose(done.cw["kernel"][:, 1], (cw1[:, 1] * w_past + new[:, 0]) / (w_past + 1), rtol=1e-5)
    np.testing.assert_allclose(done.cw["kernel"][:, 2], new[:, 1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(done.cw["kernel"][:, 0], cw1[:, 0])
    np.testing.assert_array_equal(done.past_counts, [30, 80, 40, 0, 0, 0, 0, 0, 0, 0])


def test_expanding_head_option(digits):
    config = tiny_config("cwr_plus", num_batches=1)
    config.cwr_plus.head = "expanding"
    job, log, _ = run_logged(config, digits)
    assert job.head == "expanding"
    # Logits of unseen classes are masked: their tw columns get no gradient and stay at zero init.
    tw = np.asarray(states(log, "trained")[0].params["params"]["head"]["kernel"])
    assert np.all(tw[:, 2:] == 0) and np.all(np.any(tw[:, :2] != 0, axis=0))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cwr_plus.avg", "median", "cwr_plus.avg='median' is unknown; allowed: batch, all"),
        ("cwr.init_std", -0.1, "cwr.init_std=-0.1 is invalid"),
        ("cwr.w_rest", -1.0, "cwr.w_rest=-1.0 is invalid"),
        ("ar1.avg", "max", "ar1.avg='max' is unknown; allowed: batch, all"),
        ("ar1.strength", -1.0, "ar1.strength=-1.0 is invalid"),
        ("ar1.w_first", -1.0, "ar1.w_first=-1.0 is invalid"),
    ],
)
def test_bad_hyperparameters_are_named(field, value, message):
    config = base_config()
    config.strategies = "cwr,cwr_plus,ar1"
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(config)


def test_hparams_reach_the_strategy():
    config = base_config()
    assert strategy_hparams(config, "cwr").init_std == 0.01
    assert strategy_hparams(config, "cwr_plus").avg == "batch"


def test_ar1_importance_anchor_and_penalty_never_touch_the_head(jobs, digits):
    _, log, _ = run_shared(jobs, digits, "ar1")
    final = states(log, "consolidated")[-1]
    anchor = transforms.anchor_state(final.opt_state)
    path = transforms.si_path_state(final.opt_state)
    for tree in (anchor.anchor, anchor.importance, path.path, path.start, final.strategy_state.importance):
        assert jax.tree.leaves(tree["params"]["head"]) == []  # optax.MaskedNode only
        assert len(jax.tree.leaves(tree["params"]["body"])) == 2  # fc1 kernel and bias
    assert np.any(np.asarray(anchor.importance["params"]["body"]["fc1"]["kernel"]) > 0)
    reported = jobs["ar1"].strategy.importance(final)
    assert set(reported) == {"F", "F_hat"}
    assert float(optax.tree.get(final.opt_state, "strength")) == 100.0  # λ written into the penalty
    for tree in (reported["F"], reported["F_hat"]):
        assert "head" not in tree["params"] and jax.tree.leaves(tree)

    # One update with a strong pull toward a far anchor: the body feels it, the head does not.
    tx = jobs["ar1"].strategy.transform(optax.sgd(0.1))
    params = final.params
    opt_state = transforms.replace_anchor_state(
        transforms.set_hyperparams(tx.init(params), strength=100.0),
        anchor=jax.tree.map(lambda p: p + 1.0, params),
        importance=jax.tree.map(jnp.ones_like, params),
    )
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, new_state = tx.update(grads, opt_state, params, task_grads=grads)
    np.testing.assert_allclose(updates["params"]["head"]["kernel"], -0.05, rtol=1e-6)  # -η·g, no penalty
    np.testing.assert_array_equal(updates["params"]["head"]["bias"], 0)  # bias held at zero
    # body: -η·(g + λ·F̂·(θ − Θ*)) = -0.1·(0.5 + 100·1·(−1)) = 9.95
    np.testing.assert_allclose(updates["params"]["body"]["fc1"]["kernel"], 9.95, rtol=1e-5)
    assert jax.tree.leaves(transforms.si_path_state(new_state).path["params"]["head"]) == []


def test_ar1_trains_shared_weights_and_updates_importance_by_eq_10_11(jobs, digits):
    _, log, _ = run_shared(jobs, digits, "ar1")  # λ = 100, max_F = 0.2, ξ = 1e-3, w_1 = 0.5, w_i = 2
    resets, trained, done = states(log, "reset"), states(log, "trained"), states(log, "consolidated")
    body = lambda tree: np.asarray(tree["params"]["body"]["fc1"]["kernel"], np.float64)  # noqa: E731
    importance = np.zeros_like(body(resets[0].params))
    for i in range(len(done)):
        assert not np.array_equal(body(resets[i].params), body(trained[i].params))  # Θ̄ learns on every batch
        path = body(transforms.si_path_state(trained[i].opt_state).path)
        move = body(trained[i].params) - body(resets[i].params)
        batch_importance = np.maximum(path / (move**2 + 1e-3), 0)  # eq. 10
        importance = importance + (0.5 if i == 0 else 2.0) * batch_importance  # eq. 11
        np.testing.assert_allclose(body(done[i].strategy_state.importance), importance, rtol=1e-4, atol=1e-9)
        anchor = transforms.anchor_state(done[i].opt_state)
        np.testing.assert_allclose(body(anchor.importance), np.minimum(importance, 0.2), rtol=1e-4, atol=1e-9)
        np.testing.assert_array_equal(body(anchor.anchor), body(trained[i].params))  # Θ* = Θ̄
    assert np.mean(importance >= 0.2) > 0  # the clip is exercised
