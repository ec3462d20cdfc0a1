"""importance=adam_nu (SI, EWC, AR1): the batch importance F^i is the optimizer's running mean of
squared gradients ν (Adam's state), consolidated by the strategy's own rule (eq. 8 or eq. 11)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from cljax import engine, transforms
from cljax.config import ConfigError, base_config, validate
from cljax.models import Classifier, MLPBody
from cljax.strategies import make_strategy
from tests.helpers import batch_context, traced

W_FIRST, MAX_F = 0.5, 3e-4


def trained_with_adam(name: str):
    """Strategy ``name`` with importance=adam_nu: before_batch of B_1, three Adam steps on random
    gradients, then (ν just before after_batch, the state after it)."""
    model = Classifier(MLPBody((8,)), num_classes=4)
    x = jax.random.normal(jax.random.key(0), (6, 3, 1))
    params = model.init(jax.random.key(1), x[:1])
    strategy = make_strategy(name, {"importance": "adam_nu"})
    tx = optax.with_extra_args_support(strategy.transform(engine.make_optimizer("adam")))
    opt_state = engine.set_learning_rate(tx.init(params), 0.01)
    state = engine.TrainState(params, opt_state, strategy.init(params))
    overrides = {"max_f": MAX_F} if name == "ewc" else {"max_f": MAX_F, "w_first": W_FIRST}
    ctx = batch_context(
        0, [0, 1, 2], num_classes=4, hparams=traced(name, **overrides), x=x, apply_fn=model.apply, tx=tx
    )
    state, _ = jax.jit(strategy.before_batch)(state, ctx)
    for step in range(3):
        grads = jax.tree.map(lambda p, s=step: jax.random.normal(jax.random.key(s), p.shape), state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, task_grads=grads)
        state = state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    nu = jax.device_get(optax.tree.get(state.opt_state, "nu"))
    return nu, jax.jit(strategy.after_batch)(state, ctx)


def leaves_under(tree, part: str) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree["params"][part])]


@pytest.mark.parametrize("name", ["si", "ewc", "ar1"])
def test_adam_nu_importance_equals_the_optimizers_second_moment(name):
    nu, done = trained_with_adam(name)
    assert all(np.any(leaf > 0) for leaf in jax.tree.leaves(nu))
    if name == "ewc":  # eq. 8 with F^1 = ν: F = ν, F̂ = clip(F / 1, max_F)
        raw, scale = done.strategy_state["fisher_sum"], 1.0
    elif name == "si":  # eq. 11 with F^1 = ν: F = w_1·ν, F̂ = clip(F, max_F)
        raw, scale = done.strategy_state["importance"], W_FIRST
    else:  # AR1: SI's rule on Θ̄ only; the head has no importance
        raw, scale = done.strategy_state.importance, W_FIRST
        assert jax.tree.leaves(raw["params"]["head"]) == []
    f_hat = transforms.anchor_state(done.opt_state).importance
    clipped = 0
    for part in ["body"] if name == "ar1" else ["body", "head"]:
        for got, hat, want in zip(
            leaves_under(raw, part), leaves_under(f_hat, part), leaves_under(nu, part), strict=True
        ):
            np.testing.assert_allclose(got, scale * want, rtol=1e-6)
            np.testing.assert_allclose(hat, np.minimum(scale * want, MAX_F), rtol=1e-6)
            clipped += int(np.sum(scale * want > MAX_F))
    assert clipped > 0  # the clip is exercised
    if name != "ewc":  # ν replaces the SI path integral: no tracker in the chain
        assert optax.tree.get(done.opt_state, "SIPathState") is None


@pytest.mark.parametrize("name", ["si", "ewc", "ar1"])
def test_adam_nu_needs_adam(name):
    config = base_config()
    config.strategies = name
    config[name].importance = "adam_nu"
    with pytest.raises(ConfigError, match=f"{name}.importance='adam_nu' needs optimizer='adam'"):
        validate(config)
    config.optimizer = "adam"
    validate(config)
