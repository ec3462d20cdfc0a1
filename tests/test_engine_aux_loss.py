"""Auxiliary classifiers in the engine's loss (GoogLeNet loss1/loss2, weighted 0.3 each in Caffe)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cljax import engine


class AuxModel(nn.Module):
    """A linear head plus one linear auxiliary classifier, returned (weighted) only when training."""

    num_classes: int
    aux_weight: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        logits = nn.Dense(self.num_classes, name="head")(x)
        aux = nn.Dense(self.num_classes, name="aux")(x)
        return (logits, ((self.aux_weight, aux),)) if train else logits


def numpy_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_split_outputs():
    logits = jnp.ones((2, 3))
    assert engine.split_outputs(logits)[1] == ()
    aux = jnp.zeros((2, 3))
    got_logits, got_aux = engine.split_outputs((logits, [(0.3, aux)]))
    assert got_logits is logits and got_aux == ((0.3, aux),)


def test_fit_adds_weighted_aux_loss_and_its_gradient():
    rng = np.random.default_rng(0)
    num, dim, classes, weight, lr = 6, 4, 3, 0.3, 0.5
    x = rng.normal(size=(num, dim)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1], np.int32)
    mask = np.array([True, True, False])  # an expanding head: class 2 unseen, masked for both classifiers
    model = AuxModel(classes, weight)
    params = model.init(jax.random.key(0), jnp.asarray(x))
    tx = engine.make_optimizer("sgd")
    state = engine.TrainState(params, tx.init(params), ())
    state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, lr))
    fit = engine.make_fit(model.apply, tx, engine.cross_entropy, batch_size=num)
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    new_state, metrics = fit(state, data, num, 1, jnp.asarray(mask), jax.random.key(1))
    assert int(metrics.steps) == 1

    p = jax.tree.map(np.asarray, params["params"])
    onehot = np.eye(classes, dtype=np.float32)[y]
    loss, updates = 0.0, {}
    for name, w in (("head", 1.0), ("aux", weight)):
        z = x @ p[name]["kernel"] + p[name]["bias"]
        z[:, ~mask] = -np.inf
        prob = numpy_softmax(z)
        loss += w * np.mean(-np.log(prob[np.arange(num), y]))
        delta = w * (prob - onehot) / num  # d(mean weighted CE)/dz
        updates[name] = {"kernel": -lr * x.T @ delta, "bias": -lr * delta.sum(axis=0)}
    np.testing.assert_allclose(float(metrics.loss), loss, rtol=1e-5)
    for name in ("head", "aux"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_allclose(
                np.asarray(new_state.params["params"][name][leaf]) - p[name][leaf],
                updates[name][leaf],
                rtol=1e-4,
                atol=1e-6,
            )


def test_eval_calls_see_logits_only():
    model = AuxModel(3, 0.3)
    x = jnp.ones((2, 4))
    params = model.init(jax.random.key(0), x)
    preds = engine.predict(model.apply, params, x, jnp.ones((1, 3), bool), jnp.zeros(2, jnp.int32), chunk=2)
    assert preds.shape == (2,)
