"""The experiment loop: strategies x runs x batches, results.json, comparison table.

A run is a pure function of (config, run index, key): ``run_stream`` derives
every random number from ``key`` (one fold per batch), so runs can be repeated
exactly, resumed, or later vmapped.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import pickle
import shutil
import time
import zlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import checkpoint, diagnostics, engine, metrics, monitor
from cljax.config import ConfigError, strategy_hparams, strategy_names, validate
from cljax.files import write_json_atomic  # noqa: F401  (re-exported: the results writer)
from cljax.models import HEAD, build_model
from cljax.models.pretrained import merge_pretrained, restore_params
from cljax.scenarios import DataError, Dataset, Scenario, build_scenario, load_dataset, nc_capacity
from cljax.strategies import BatchContext, Strategy, make_strategy


def data_capacity(dataset: Dataset, config, cumulative: bool) -> int:
    """Rows to pad every batch to: the largest training set any run can produce.

    Benchmarks with official batches (``dataset.protocol``: CORe50, CIFAR splits)
    report it themselves (the largest batch, or cumulative set, over their runs).
    """
    if dataset.protocol is not None:
        return dataset.protocol.capacity(cumulative)
    return nc_capacity(
        dataset.train_y,
        dataset.num_classes,
        config.classes_per_batch,
        config.first_batch_classes,
        config.num_batches,
        cumulative,
    )


@dataclasses.dataclass(frozen=True)
class Heads:
    """Logit masks for training on B_i and for evaluating after B_i (App. A heads, MT oracle)."""

    kind: str  # maximal | expanding | multi (MT)
    scenario: Scenario

    def train_mask(self, i: int) -> np.ndarray:
        mask = np.zeros(self.scenario.num_classes, bool)
        if self.kind == "maximal":
            mask[:] = True
        elif self.kind == "expanding":
            mask[self.scenario.seen_classes(i)] = True
        else:
            mask[list(self.scenario.batches[i].classes)] = True
        return mask

    def eval_masks(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask_table [K, C], mask_index [num_test]) for ``engine.predict``."""
        if self.kind != "multi":
            return self.train_mask(i)[None], np.zeros(len(self.scenario.test_y), np.int32)
        return self.task_table(), self.task_index(self.scenario.test_y)

    def task_table(self) -> np.ndarray:
        """[T + 1, C]: row t = task t's classes; the last row (all classes) serves classes
        outside the stream (num_batches)."""
        rows = [self.train_mask(t) for t in range(self.scenario.num_batches)]
        return np.stack(rows + [np.ones(self.scenario.num_classes, bool)])

    def task_index(self, labels: np.ndarray) -> np.ndarray:
        """Task oracle: the row of ``task_table`` each example is classified with."""
        task = self.scenario.class_to_task()[labels]
        return np.where(task < 0, self.scenario.num_batches, task).astype(np.int32)


def apply_head(params, features_BxD: jax.Array, train: bool = False, rngs=None) -> jax.Array:
    """The classifier layer alone, on penultimate features: the model of a head-only fit."""
    del train, rngs  # the head has no dropout
    head = params["params"][HEAD]
    return nn.Dense(head["kernel"].shape[-1]).apply({"params": head}, features_BxD)


def head_kind(config, hp, strategy: Strategy) -> str:
    if config.setting == "mt":
        return "multi"
    return strategy.default_head if hp.head == "default" else hp.head


@dataclasses.dataclass
class StreamState:
    """What a run carries from one batch to the next; a checkpoint holds exactly this."""

    state: engine.TrainState
    key: jax.Array  # the run's key: its initial weights and batch i's randomness derive from it
    record: dict[str, Any]  # results so far; JSON-native values only (checkpointed as JSON)
    next_batch: int  # 0-based index of the first batch still to train


def step_loop(choice: str, model, input_shape) -> str:
    """``auto``: the step loop on the host for convolutional models on CPU (XLA:CPU runs
    convolutions inside a compiled while loop many times slower, jax-ml/jax#12868), else
    inside the compiled program."""
    if choice != "auto":
        return choice
    if jax.default_backend() != "cpu":
        return "device"
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + tuple(input_shape))))
    has_conv = any(leaf.ndim == 4 for leaf in jax.tree.leaves(shapes))  # conv kernels are HWIO
    return "host" if has_conv else "device"


@dataclasses.dataclass
class Trainer:
    """What one strategy needs for all its runs: model, transformation, compiled fit."""

    name: str
    config: Any
    hp: Any
    strategy: Strategy
    model: Any
    tx: Any
    fit: Callable
    capacity: int
    progress: monitor.ProgressDisplay | None = None  # steps done / total during each fit
    head_fit: Callable | None = None  # head-only fit for batches with ``strategy.trains_body(i)`` False
    pretrained: Any = None  # initial params read from config.init_checkpoint (None: random init)

    @classmethod
    def build(cls, config, name: str, dataset: Dataset, progress: monitor.ProgressDisplay | None = None) -> Trainer:
        hp = strategy_hparams(config, name)
        strategy = make_strategy(name, hp)
        model = build_model(config, dataset.num_classes)
        tx = strategy.transform(engine.make_optimizer(hp.optimizer, hp.momentum))
        on_steps = progress.update if progress is not None else None
        loop = step_loop(config.step_loop, model, dataset.input_shape)
        fit = engine.make_fit(model.apply, tx, strategy.loss, hp.batch_size, progress=on_steps, loop=loop)
        head_fit = engine.make_fit(apply_head, tx, strategy.loss, hp.batch_size, progress=on_steps)
        capacity = data_capacity(dataset, config, strategy.cumulative_data)
        trainer = cls(name, config, hp, strategy, model, tx, fit, capacity, progress=progress, head_fit=head_fit)
        if config.init_checkpoint:
            trainer.pretrained = restore_params(config.init_checkpoint)
            # Checks the checkpoint against the model's shapes now (ConfigError), before any training.
            x = jnp.zeros((1,) + tuple(dataset.input_shape), jnp.float32)
            shapes = jax.eval_shape(lambda key: model.init({"params": key}, x), jax.random.key(0))
            merge_pretrained(shapes, trainer.pretrained)
        return trainer

    def init_state(self, key: jax.Array, input_shape) -> engine.TrainState:
        params = self.model.init({"params": key}, jnp.zeros((1,) + tuple(input_shape), jnp.float32))
        if self.pretrained is not None:  # config.init_checkpoint; a head of another size stays fresh
            params = merge_pretrained(params, self.pretrained)
        return engine.TrainState(params, self.tx.init(params), self.strategy.init(params))

    def training_arrays(self, scenario: Scenario, i: int, heads: Heads) -> tuple[dict[str, jax.Array], int]:
        batches = scenario.batches[: i + 1] if self.strategy.cumulative_data else scenario.batches[i : i + 1]
        x = np.concatenate([b.x for b in batches])
        y = np.concatenate([b.y for b in batches])
        data = {"x": engine.pad_to(x, self.capacity), "y": engine.pad_to(y, self.capacity)}
        if heads.kind == "multi":  # each example trains its own task's head (Cumulative mixes tasks)
            data["mask_index"] = engine.pad_to(heads.task_index(y), self.capacity)
        return jax.device_put(data), len(y)

    def fit_batch(self, state: engine.TrainState, data, num_examples, epochs, logit_mask, key, index: int):
        """Trains B_index: the whole model, or, when ``strategy.trains_body(index)`` is False (CWR,
        CWR+ after B_1), the head alone on features computed once with Θ̄ frozen.

        The head-only fit is a second compiled ``fit`` whose params are ``{'params': {'head': ...}}``:
        Θ̄ is neither differentiated nor updated, so it stays bitwise unchanged whatever the
        optimizer. Its optimizer state starts fresh each batch (the head is re-initialised anyway).
        """
        if self.strategy.trains_body(index):
            return self.fit(state, data, num_examples, epochs, logit_mask, key)
        chunk = min(self.config.eval_batch_size, self.capacity)
        feats = engine.features(self.model.apply, state.params, data["x"], chunk=chunk)
        head_params = {"params": {HEAD: state.params["params"][HEAD]}}
        opt_state = engine.set_learning_rate(
            self.tx.init(head_params), optax.tree.get(state.opt_state, "learning_rate")
        )
        head_state = engine.TrainState(head_params, opt_state, state.strategy_state)
        head_state, fit_metrics = self.head_fit(head_state, {**data, "x": feats}, num_examples, epochs, logit_mask, key)
        params = {**state.params, "params": {**state.params["params"], HEAD: head_state.params["params"][HEAD]}}
        return state._replace(params=params, strategy_state=head_state.strategy_state), fit_metrics

    def start_stream(self, scenario: Scenario, run: int, key: jax.Array) -> StreamState:
        """A run before its first batch: initial weights from ``key``, an empty record."""
        init_key, _ = jax.random.split(key)
        state = self.init_state(init_key, scenario.input_shape)
        record: dict[str, Any] = {
            "run": run,
            "class_order": list(scenario.class_order),
            "batch_classes": scenario.batch_classes,
            "head": head_kind(self.config, self.hp, self.strategy),
            "accuracy": [],
            "seen_accuracy": [],
            "accuracy_matrix": [],
            "train_examples": [],
            "train_seconds": [],
            "loss": [],
            "confusion_matrices": [],
            "diverged": None,
        }
        return StreamState(state, key, record, next_batch=0)

    def run_stream(
        self,
        scenario: Scenario,
        run: int,
        key: jax.Array,
        on_batch: Callable[[dict], None] | None = None,
        *,
        resume: StreamState | None = None,
        on_checkpoint: Callable[[StreamState], None] | None = None,
    ) -> dict:
        """Trains and evaluates every batch of one run; returns its results record.

        ``resume`` (a restored ``StreamState``) starts at its ``next_batch`` instead of
        from the initial weights; since batch i draws its randomness from the run's key
        (``fold_in(key, i)``), the numbers are those of an uninterrupted run.
        ``on_checkpoint`` receives the stream after every completed batch, before
        ``on_batch`` reports it.

        Divergence guard: a non-finite loss or gradient in ``fit`` (which then stops at
        the last good step), or non-finite parameters after ``after_batch``, ends the run
        with ``record["diverged"] = {"batch", "step", "reason"}`` (``step`` None for the
        parameter check); the batch is not evaluated and nothing is checkpointed for it.
        """
        heads = Heads(head_kind(self.config, self.hp, self.strategy), scenario)
        stream = resume if resume is not None else self.start_stream(scenario, run, key)
        state, record = stream.state, stream.record
        init_key, key = jax.random.split(stream.key)
        test_x = jax.device_put(scenario.test_x)
        for i in range(stream.next_batch, scenario.num_batches):
            batch = scenario.batches[i]
            first = i == 0
            params_before = self.strategy.eval_params(state)  # diagnostics: weight change over B_i
            before_key, fit_key, after_key = jax.random.split(jax.random.fold_in(key, i), 3)
            data, num_examples = self.training_arrays(scenario, i, heads)
            logit_mask = jnp.asarray(heads.train_mask(i))
            # MT: per-example task heads (a table indexed by data["mask_index"]); SIT: one mask.
            fit_mask = jnp.asarray(heads.task_table()) if heads.kind == "multi" else logit_mask
            ctx = BatchContext(
                index=i,
                classes=batch.classes,
                seen_classes=tuple(scenario.seen_classes(i)),
                num_classes=scenario.num_classes,
                data=data,
                num_examples=num_examples,
                batch_sizes=tuple(len(b.y) for b in scenario.batches[: i + 1]),
                apply_fn=self.model.apply,
                logit_mask=logit_mask,
                key=before_key,
            )
            start = time.perf_counter()
            if self.strategy.restart_each_batch:  # e.g. Cumulative: retrain from the initial weights
                state = self.init_state(init_key, scenario.input_shape)._replace(strategy_state=state.strategy_state)
            lr = self.hp.lr_first if first else self.hp.lr
            state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, lr))
            state, data = self.strategy.before_batch(state, ctx)
            epochs = self.hp.epochs_first if first else self.hp.epochs
            if self.progress is not None:
                self.progress.begin(f"{self.name:<11} run {run} batch {i + 1}/{scenario.num_batches}")
            state, fit_metrics = self.fit_batch(state, data, num_examples, epochs, fit_mask, fit_key, i)
            bad_step = int(fit_metrics.nonfinite_step)
            if bad_step >= 0:
                record["diverged"] = {"batch": i, "step": bad_step, "reason": "loss or gradient not finite"}
                break
            state = self.strategy.after_batch(state, dataclasses.replace(ctx, data=data, key=after_key))
            if not bool(_all_finite((state.params, self.strategy.eval_params(state)))):
                record["diverged"] = {"batch": i, "step": None, "reason": "parameters not finite after after_batch"}
                break
            jax.block_until_ready(state)
            seconds = time.perf_counter() - start

            table, index = heads.eval_masks(i)
            preds = engine.predict(
                self.model.apply,
                self.strategy.eval_params(state),
                test_x,
                jnp.asarray(table),
                jnp.asarray(index),
                chunk=min(self.config.eval_batch_size, len(scenario.test_y)),
            )
            cm = engine.confusion_matrix(scenario.test_y, np.asarray(preds), scenario.num_classes)
            record["accuracy"].append(float(np.trace(cm) / cm.sum()))
            record["seen_accuracy"].append(metrics.class_set_accuracy(cm, scenario.seen_classes(i)))
            record["accuracy_matrix"].append([metrics.class_set_accuracy(cm, b.classes) for b in scenario.batches])
            record["train_examples"].append(num_examples)
            record["train_seconds"].append(seconds)
            record["loss"].append(float(fit_metrics.loss))
            record["confusion_matrices"].append(cm.tolist())
            # Section 5 diagnostics (weight change, importance histograms) into record["diagnostics"].
            diagnostics.record_batch(record, params_before, state, self.strategy)
            if on_checkpoint is not None:
                on_checkpoint(StreamState(state, stream.key, record, next_batch=i + 1))
            if on_batch is not None:
                on_batch(
                    {
                        "strategy": self.name,
                        "run": run,
                        "batch": i,
                        "num_batches": scenario.num_batches,
                        "accuracy": record["accuracy"][-1],
                        "seen_accuracy": record["seen_accuracy"][-1],
                        "loss": record["loss"][-1],
                        "seconds": seconds,
                    }
                )
        return record


_all_finite = jax.jit(engine.tree_all_finite)


def print_progress(event: dict) -> None:
    print(
        f"{event['strategy']:<11} run {event['run']} batch {event['batch'] + 1}/{event['num_batches']}: "
        f"accuracy {event['accuracy']:.3f} (seen classes {event['seen_accuracy']:.3f}) {event['seconds']:.1f}s",
        flush=True,
    )


def comparison_table(results: dict) -> str:
    lines = [f"{'strategy':<12}{'final accuracy':>20}{'average':>10}{'forgetting':>12}{'BWT':>9}"]
    for name, entry in results["strategies"].items():
        s = entry.get("summary")
        if not s:
            continue
        lines.append(
            f"{name:<12}{s['final_accuracy_mean']:>12.3f} ± {s['final_accuracy_std']:.3f}"
            f"{s['average_accuracy_mean']:>10.3f}{s['forgetting_mean']:>12.3f}{s['bwt_mean']:>9.3f}"
        )
    return "\n".join(lines)


def prepare(config) -> tuple[Dataset, list[str]]:
    """Validates the config and reads the data; raises ConfigError/DataError before any training."""
    validate(config)
    try:
        dataset = load_dataset(config.dataset, config.data_dir, config)
    except (ConfigError, DataError):
        raise
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, zlib.error, pickle.UnpicklingError) as e:
        # Every reader's failure is bad input, reported the same way (one sentence, the path).
        raise DataError(f"dataset={config.dataset!r} cannot be read from data_dir={config.data_dir!r}: {e}") from None
    if dataset.protocol is None:  # plain datasets: the config splits them
        for field in ("first_batch_classes", "classes_per_batch"):
            if config[field] > dataset.num_classes:
                raise ConfigError(
                    f"{field}={config[field]} is invalid; dataset {config.dataset!r} has only "
                    f"{dataset.num_classes} classes"
                )
    try:
        build_scenario(config, 0, dataset)  # checks the class split against the dataset
    except (ConfigError, DataError):
        raise
    except ValueError as e:
        raise ConfigError(f"classes_per_batch/first_batch_classes/num_batches: {e}") from None
    return dataset, strategy_names(config)


def checkpoint_step(strategy_index: int, run: int, batch: int, num_runs: int, num_batches: int) -> int:
    """The checkpoint step of a completed batch: its position in the experiment (monotonic)."""
    return (strategy_index * num_runs + run) * num_batches + batch


def divergence_message(name: str, run: int, diverged: dict, num_batches: int, checkpoint_path: str | None) -> str:
    step = "" if diverged["step"] is None else f" at step {diverged['step']}"
    kept = (
        f"last good checkpoint (after batch {diverged['batch']}): {checkpoint_path}"
        if checkpoint_path
        else "no checkpoint of this run precedes it"
    )
    return (
        f"{name} run {run} diverged in batch {diverged['batch'] + 1}/{num_batches}{step} ({diverged['reason']}); "
        f"run stopped, the other runs and strategies go on; {kept}"
    )


def _save_batch(
    checkpoints: checkpoint.Checkpoints, results: dict, name: str, run: int, step_of: Callable, stream: StreamState
) -> None:
    """``on_checkpoint``: the stream and everything finished so far, as the batch's step."""
    batch = stream.next_batch - 1
    progress = {"strategy": name, "run": run, "batch": batch, "record": stream.record, "results": results}
    checkpoints.save(step_of(batch), stream.state, stream.key, progress)


def _restore_stream(
    checkpoints: checkpoint.Checkpoints, step: int, progress: dict, trainer: Trainer, scenario: Scenario, key
) -> StreamState:
    """The run of ``progress`` as checkpointed at ``step``, shaped like a fresh one."""
    fresh = trainer.start_stream(scenario, progress["run"], key)
    state, run_key = checkpoints.restore(step, fresh.state, fresh.key)
    resume = StreamState(state, run_key, progress["record"], next_batch=progress["batch"] + 1)
    print(
        f"{trainer.name} run {progress['run']}: resuming after batch {resume.next_batch}/{scenario.num_batches} "
        f"from {checkpoints.path(step)}",
        flush=True,
    )
    return resume


def _report_divergence(
    checkpoints: checkpoint.Checkpoints, record: dict, name: str, run: int, step_of: Callable, num_batches: int
) -> None:
    """Keeps the run's last good checkpoint (the batch before the bad one), names it in the
    record (relative to the workdir) and prints the message."""
    diverged = record["diverged"]
    kept = step_of(diverged["batch"] - 1) if diverged["batch"] > 0 else None
    if kept is not None:
        checkpoints.keep(kept)
    diverged["checkpoint_step"] = kept
    diverged["checkpoint"] = None if kept is None else os.path.join(checkpoint.CHECKPOINTS_DIR, str(kept))
    path = None if kept is None else checkpoints.path(kept)
    print(divergence_message(name, run, diverged, num_batches, path), flush=True)


def clear_workdir(workdir: str) -> None:
    """``--config.overwrite=True``: removes what this program writes into the workdir (checkpoints,
    results.json, diagnostics_*.npz, report/, tensorboard/), nothing else."""
    for directory in (checkpoint.CHECKPOINTS_DIR, "report", "tensorboard"):
        shutil.rmtree(os.path.join(workdir, directory), ignore_errors=True)
    here = glob.escape(workdir)
    outputs = [os.path.join(here, checkpoint.RESULTS_FILE), diagnostics.diagnostics_path(here, "*")]
    for path in [p for pattern in outputs for p in glob.glob(pattern)]:
        os.unlink(path)


def run_experiment(
    config, workdir: str, log: Callable[[dict], None] = print_progress, show_progress: bool = True
) -> dict:
    """Runs every strategy and run of ``config``; writes ``<workdir>/results.json`` (and the per-batch
    diagnostics beside it) after each run, a checkpoint after each batch, TensorBoard scalars after
    each batch when ``tensorboard`` is installed, and ``<workdir>/report/`` at the end (``cljax.report``).

    Everything is validated and the workdir checked before anything is written. A checkpoint
    holds the run's state and record and every finished run, so a workdir holding checkpoints of
    the same config resumes from its last completed batch (exactly: see ``run_stream``); one
    holding another config is refused unless ``config.overwrite``.
    """
    from cljax import report  # matplotlib: imported only when a job runs

    dataset, names = prepare(config)
    if config.overwrite:
        clear_workdir(workdir)
    else:
        checkpoint.check_workdir(workdir, config)
    checkpoints = checkpoint.Checkpoints(os.path.join(workdir, checkpoint.CHECKPOINTS_DIR))
    latest = checkpoints.latest_step()
    progress = checkpoints.progress(latest) if latest is not None else None
    results: dict[str, Any] = {
        "config": config.to_dict(),
        "strategies": progress["results"]["strategies"] if progress else {},
    }
    for entry in results["strategies"].values():
        for record in entry["runs"]:
            if record["diverged"] and record["diverged"]["checkpoint_step"] is not None:
                checkpoints.keep(record["diverged"]["checkpoint_step"])
    display = monitor.ProgressDisplay() if show_progress else None
    scalars = monitor.tensorboard_writer(os.path.join(workdir, "tensorboard"))

    def on_batch(event: dict) -> None:
        log(event)
        if scalars is not None:
            values = {k: event[k] for k in ("accuracy", "seen_accuracy", "loss", "seconds")}
            scalars.scalars(event["strategy"], event["run"], event["batch"] + 1, values)

    for s, name in enumerate(names):
        entry = results["strategies"].setdefault(name, {"runs": []})
        runs = entry["runs"]
        if len(runs) == config.num_runs:
            continue
        trainer = Trainer.build(config, name, dataset, display)
        for run in range(len(runs), config.num_runs):
            scenario = build_scenario(config, run, dataset)
            key = jax.random.fold_in(jax.random.key(config.seed), run)
            step_of = functools.partial(
                checkpoint_step, s, run, num_runs=config.num_runs, num_batches=scenario.num_batches
            )
            resume = None
            if progress is not None and (progress["strategy"], progress["run"]) == (name, run):
                resume = _restore_stream(checkpoints, latest, progress, trainer, scenario, key)
            save = functools.partial(_save_batch, checkpoints, results, name, run, step_of)
            record = trainer.run_stream(scenario, run, key, on_batch=on_batch, resume=resume, on_checkpoint=save)
            if record["diverged"] is not None:
                _report_divergence(checkpoints, record, name, run, step_of, scenario.num_batches)
            runs.append(record)
            complete = [r for r in runs if r["diverged"] is None]
            entry["summary"] = metrics.summarize(complete) if complete else None
            diagnostics.write_results(workdir, results)  # results.json + diagnostics_<strategy>.npz
    diagnostics.write_results(workdir, results)  # also when a resumed workdir had nothing left to do
    checkpoints.close()
    if scalars is not None:
        scalars.close()  # every batch was flushed already
    report.write_report(workdir)
    return results
