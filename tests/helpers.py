"""Test helpers: an array ``BatchContext`` built by hand, the traced hyperparameters of a strategy, and
results without their wall-clock timings."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.strategies import BatchContext, default_hparams, strategy_spec


def without_timings(results: dict, *config_fields: str) -> dict:
    """A copy of ``results`` (results.json) without what differs between equal runs: each run's
    ``train_seconds`` and the named ``config`` fields (e.g. a process's own ``distributed`` id)."""
    results = copy.deepcopy(results)
    for entry in results["strategies"].values():
        for record in entry["runs"]:
            record.pop("train_seconds")
    for field in config_fields:
        results["config"].pop(field)
    return results


def traced(name: str, **overrides: Any) -> dict[str, jax.Array]:
    """Strategy ``name``'s traced hyperparameters (defaults, then ``overrides``) as arrays,
    with the training fields a stream passes too."""
    values = {**default_hparams(name), "lr_first": 0.1, "lr": 0.1, "epochs_first": 1, "epochs": 1, **overrides}
    names = strategy_spec(name).traced_names() + ("lr_first", "lr", "epochs_first", "epochs")
    return {k: jnp.asarray(values[k], jnp.int32 if k.startswith("epochs") else jnp.float32) for k in names}


def batch_context(
    index: int,
    y: Sequence[int] = (),
    num_classes: int = 4,
    hparams: Mapping[str, jax.Array] | None = None,
    x: Any = None,
    capacity: int = 16,
    batch_sizes: Sequence[int] | None = None,
    num_batches: int = 5,
    apply_fn: Any = None,
    tx: Any = None,
    logit_mask: Any = None,
    seen: Sequence[int] | None = None,
) -> BatchContext:
    """Batch ``index`` (0-based) holding labels ``y`` (zero-padded to ``capacity``)."""
    labels = np.zeros(capacity, np.int32)
    labels[: len(y)] = y
    classes = np.zeros(num_classes, bool)
    classes[list(y)] = True
    seen_mask = classes.copy()
    if seen is not None:
        seen_mask[list(seen)] = True
    sizes = np.zeros(num_batches, np.int32)
    given = [len(y)] * (index + 1) if batch_sizes is None else list(batch_sizes)
    sizes[: len(given)] = given
    return BatchContext(
        index=jnp.int32(index),
        classes=jnp.asarray(classes),
        seen_classes=jnp.asarray(seen_mask),
        class_counts=jnp.asarray(np.bincount(np.asarray(y, np.int64), minlength=num_classes).astype(np.float32)),
        batch_sizes=jnp.asarray(sizes),
        num_examples=jnp.int32(len(y)),
        data={"x": jnp.zeros((capacity, 1)) if x is None else x, "y": jnp.asarray(labels)},
        logit_mask=jnp.ones(num_classes, bool) if logit_mask is None else logit_mask,
        hparams=dict(hparams or {}),
        key=jax.random.key(index),
        apply_fn=apply_fn,
        tx=tx,
    )


def run_logged(job, scenario, run: int = 0) -> list[tuple[str, int, Any]]:
    """Runs one member's stream stage by stage (``StreamProgram.begin``, ``fit``, ``end``) and logs
    its state: ('initial', -1), then per batch i ('reset', i) after ``before_batch``, ('trained', i)
    after the fit, ('consolidated', i) after ``after_batch``."""
    from cljax import engine, experiment

    chunk = experiment.Chunk((run,), (0,))
    states = experiment.start_chunk(job, chunk, [scenario]).states
    heads = [experiment.Heads(job.head, scenario, job.strategy.multi_head_fit)]
    keys = jnp.stack([experiment.run_key(job.config, run)])
    alive = jnp.ones((1, 1), bool)
    program = job.program
    log = [("initial", -1, engine.unstack_member(states))]
    for i in range(scenario.num_batches):
        inputs = experiment.batch_inputs(job, [scenario], heads, keys, i)
        started = program.begin(states, inputs, job.traced)
        log.append(("reset", i, engine.unstack_member(started.states)))
        fitted, fit_metrics = program.fit(started, inputs)
        assert int(fit_metrics.nonfinite_step[0, 0]) < 0
        log.append(("trained", i, engine.unstack_member(fitted)))
        states, _ = program.end(fitted, states, started.eval_before, fit_metrics, inputs, job.traced, alive)
        log.append(("consolidated", i, engine.unstack_member(states)))
    return log


def stage(log, name: str) -> list[Any]:
    """The states logged at ``name`` ('reset', 'trained', 'consolidated'), in batch order."""
    return [state for kind, _, state in log if kind == name]


def split_digits_final_accuracy(dataset, name: str, memory_size: int = 200) -> float:
    """The final accuracy of ``split_digits_record``."""
    return split_digits_record(dataset, name, memory_size)["accuracy"][-1]


SPLIT_DIGITS_EPOCHS = 3


def split_digits_record(dataset, name: str, memory_size: int = 200) -> dict:
    """Split digits (SIT, 5 x 2), one run, a 32-unit MLP, 3 epochs per batch with SGD at 0.1, every
    program compiled once (max_traces=1: nothing recompiles between batches); a strategy with a
    memory keeps ``memory_size`` patterns. The run's record (it did not diverge)."""
    from cljax.config import base_config
    from cljax.experiment import StrategyJob, run_stream

    config = base_config()
    config.hidden_sizes = (32,)
    config.num_runs = 1
    for section in (config, config[name]):
        section.epochs_first = section.epochs = SPLIT_DIGITS_EPOCHS
        section.lr_first = section.lr = 0.1
    if "memory_size" in config[name]:
        config[name].memory_size = memory_size
    job = StrategyJob.build(config, name, dataset)
    job = dataclasses.replace(job, program=dataclasses.replace(job.program, max_traces=1))
    (record,) = run_stream(job, dataset, runs=[0])
    assert record["diverged"] is None
    return record
