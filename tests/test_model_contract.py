"""Bring your own model: the classifier found by ``config.classifier``, and the model contract
checked when the experiment is built (one clear error, before any training)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from cljax import experiment, registry
from cljax.config import ConfigError
from cljax.models import MODELS
from cljax.scenarios import build_scenario, load_dataset
from tests.helpers import run_logged, stage


class Decoder(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, h):
        return nn.Dense(self.num_classes, name="out")(h)


class OtherNames(nn.Module):
    """The worked example of docs/models.md: layers named trunk and decoder/out, not body and head."""

    num_classes: int

    def setup(self):
        self.trunk = nn.Dense(32)
        self.decoder = Decoder(self.num_classes)

    def features(self, x, train: bool = False):
        del train
        return nn.relu(self.trunk(x.reshape((x.shape[0], -1))))

    def __call__(self, x, train: bool = False):
        return self.decoder(self.features(x, train))


class NoFeatures(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes, name="head")(x.reshape((x.shape[0], -1)))


class NoTrainFlag(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes, name="head")(x.reshape((x.shape[0], -1)))


@pytest.fixture
def registered_models():
    for name, cls in (("other_names", OtherNames), ("no_features", NoFeatures), ("no_train", NoTrainFlag)):
        registry.register_model(name, lambda config, num_classes, cls=cls: cls(num_classes), replace=True)
    yield
    for name in ("other_names", "no_features", "no_train"):
        del MODELS[name]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize(
    ("model", "classifier", "words"),
    [
        ("no_features", "head", ["no features method", "features(self, x, train)"]),
        ("no_train", "head", ["must accept train=True"]),
        ("other_names", "head", ["classifier='head'", "decoder, trunk", "--config.classifier"]),
        ("other_names", "decoder/nope", ["classifier='decoder/nope'"]),
    ],
)
def test_contract_violations_are_one_sentence_at_build(
    tiny_config, digits, registered_models, model, classifier, words
):
    tiny_config.model = model
    tiny_config.classifier = classifier
    with pytest.raises(ConfigError) as e:
        experiment.StrategyJob.build(tiny_config, "naive", digits)
    message = str(e.value)
    assert message.startswith(f"model={model!r}: model ") and "\n" not in message
    for word in words:
        assert word in message, message


def test_a_job_checks_its_model_once_and_still_refuses_a_bad_one(tiny_config, digits, registered_models, monkeypatch):
    """Every strategy of a job builds the same model: the contract is checked for the first one
    only (the check traces the model four times); a model that fails is checked, and refused, again."""
    checked = []
    real_check = experiment.check_model
    monkeypatch.setattr(experiment, "check_model", lambda *args: checked.append(args) or real_check(*args))
    experiment.check_model_once.cache_clear()
    for name in ("naive", "ewc", "si"):
        experiment.StrategyJob.build(tiny_config, name, digits)
    assert len(checked) == 1
    tiny_config.model = "no_features"
    for _ in range(2):
        with pytest.raises(ConfigError):
            experiment.StrategyJob.build(tiny_config, "naive", digits)
    assert len(checked) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cwr_plus", "ar1"])
def test_head_strategies_on_a_model_with_other_layer_names(tiny_config, digits, registered_models, name):
    config = tiny_config
    config.model = "other_names"
    config.classifier = "decoder/out"
    config.num_batches = 2
    config[name].epochs = 2
    job = experiment.StrategyJob.build(config, name, digits)
    scenario = build_scenario(config, 0, digits)
    log = run_logged(job, scenario)
    trained, consolidated = stage(log, "trained"), stage(log, "consolidated")
    out = [state.params["params"]["decoder"]["out"] for state in trained]
    for head in out:  # the classifier's bias stays zero (freeze_head_bias found it)
        assert not np.any(np.asarray(head["bias"]))
    # The consolidated head holds B_1's classes after B_1, and B_2's columns only after B_2.
    cw = [
        np.asarray(state.strategy_state.cw["kernel"] if name == "cwr_plus" else state.strategy_state.head.cw["kernel"])
        for state in consolidated
    ]
    first, second = scenario.batch_classes
    assert np.any(cw[0][:, first]) and not np.any(cw[0][:, second]) and np.any(cw[1][:, second])
    trunk = [state.params["params"]["trunk"]["kernel"] for state in trained]
    if name == "cwr_plus":  # Θ̄ frozen after B_1 (freeze_body found the classifier)
        np.testing.assert_array_equal(trunk[0], trunk[1])
    else:  # AR1 trains Θ̄ under the SI penalty; its importance covers the trunk only
        assert not np.array_equal(trunk[0], trunk[1])
        importance = job.strategy.importance(jax.tree.map(np.asarray, consolidated[-1]))
        assert list(importance["F"]["params"]) == ["trunk"]
    (record,) = experiment.run_stream(job, digits, [0])
    assert record["accuracy"][0] > 0.15  # B_1 learnt (its 2 of 10 classes: at most 0.2)
