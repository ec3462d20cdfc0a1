"""The loss contract: ``loss(logits, minibatch, strategy_state, logit_mask)``. A loss that spreads
probability mass (label smoothing) keeps it on the training head with the mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import engine, experiment, registry
from cljax.models import Classifier, MLPBody
from cljax.scenarios import load_dataset
from cljax.strategies import STRATEGIES, Strategy, StrategySpec

SMOOTHING = 0.2


def smoothed_on_head(logits, batch, strategy_state, logit_mask):
    """Label smoothing over the head's classes only: (1 − a)·onehot + a / |head| on the head."""
    del strategy_state
    head = jnp.broadcast_to(logit_mask, logits.shape).astype(logits.dtype)
    onehot = jax.nn.one_hot(batch["y"], logits.shape[-1], dtype=logits.dtype)
    targets = (1 - SMOOTHING) * onehot + SMOOTHING * head / head.sum(-1, keepdims=True)
    return optax.softmax_cross_entropy(logits, targets)


def smoothed_everywhere(logits, batch, strategy_state, logit_mask):
    """What a loss without the mask can do: smoothing over every class, masked ones included."""
    del strategy_state, logit_mask
    onehot = jax.nn.one_hot(batch["y"], logits.shape[-1], dtype=logits.dtype)
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, SMOOTHING))


def fit_loss(loss_fn, mask):
    """The reported loss of one fit step with learning rate 0 (params unchanged) and the logits."""
    model = Classifier(MLPBody((8,)), 6)
    x = jax.random.normal(jax.random.key(0), (12, 1, 1, 5))
    y = jnp.asarray(np.arange(12) % 3, jnp.int32)
    params = model.init(jax.random.key(1), x[:1])
    tx = engine.make_optimizer("sgd")
    state = engine.TrainState(params, tx.init(params), ())
    fit = engine.make_fit(model.apply, tx, loss_fn, batch_size=12)
    _, metrics = fit(state, {"x": x, "y": y}, 12, 1, mask, jax.random.key(2))
    return float(metrics.loss), model.apply(params, x, train=False), y


def test_label_smoothing_on_an_expanding_head_matches_a_hand_computation():
    mask = jnp.asarray([True, True, True, False, False, False])  # expanding head after B_1 = {0, 1, 2}
    loss, logits, y = fit_loss(smoothed_on_head, mask)
    head_logp = jax.nn.log_softmax(logits[:, :3])  # the 3-class problem of the head, by hand
    targets = (1 - SMOOTHING) * jax.nn.one_hot(y, 3) + SMOOTHING / 3
    assert loss == pytest.approx(float(jnp.mean(-jnp.sum(targets * head_logp, -1))), rel=1e-5)
    without_mask, _, _ = fit_loss(smoothed_everywhere, mask)
    assert without_mask > 1e7  # the symptom the mask removes: mass on the -1e9 logits


def smoothing_strategy(static):
    del static
    return Strategy(name="smooth", loss=smoothed_on_head, default_head="expanding")


@pytest.mark.slow
def test_stream_with_label_smoothing_on_an_expanding_head(tiny_config):
    registry.register_strategy("smooth", StrategySpec(smoothing_strategy))
    try:
        config = tiny_config
        config.strategies = "smooth"
        config.num_batches = 3
        dataset = load_dataset("digits")
        job = experiment.StrategyJob.build(config, "smooth", dataset)
        assert job.head == "expanding"
        (record,) = experiment.run_stream(job, dataset, [0])
        assert len(record["loss"]) == 3 and all(0 < loss < 3 for loss in record["loss"])
        assert record["accuracy"][0] > 0.9 * 2 / 10  # B_1 learnt: its 2 classes of the 10 in the test set
    finally:
        del STRATEGIES["smooth"]
