"""LwF, EWC and SI on a tiny split-digits stream: one compilation of ``fit`` per stream; config checks."""

import dataclasses

import pytest

from cljax.config import ConfigError, base_config, validate
from cljax.experiment import StrategyJob, run_stream
from cljax.scenarios import load_dataset


def _tiny_config(strategy: str):
    c = base_config()
    c.strategies = strategy
    c.hidden_sizes = (16,)
    c.epochs_first = c.epochs = 1
    c.num_batches = 3
    c.num_runs = 1
    c[strategy].epochs_first = c[strategy].epochs = 1
    return c


@pytest.mark.parametrize("strategy", ["lwf", "ewc", "si"])
def test_fit_compiles_once_for_the_whole_stream(strategy):
    config = _tiny_config(strategy)
    validate(config)
    dataset = load_dataset(config.dataset, config.data_dir)
    job = StrategyJob.build(config, strategy, dataset)
    job = dataclasses.replace(job, program=dataclasses.replace(job.program, max_traces=1))  # raises on a recompile
    (record,) = run_stream(job, dataset, runs=[0])
    assert record["diverged"] is None
    assert len(record["accuracy"]) == 3


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("lwf.map_from", (0.5, 0.5), "lwf.map_from"),
        ("ewc.strength", -1.0, "ewc.strength"),
        ("ewc.fisher", "exact", "ewc.fisher='exact' is unknown; allowed: per_example, minibatch"),
        ("ewc.fisher_batch_size", 0, "ewc.fisher_batch_size"),
        ("si.max_f", 0.0, "si.max_f"),
        ("si.xi", -1e-3, "si.xi"),
        ("si.w_rest", -1.0, "si.w_rest"),
    ],
)
def test_bad_regularization_fields_are_named(field, value, message):
    config = base_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(config)
