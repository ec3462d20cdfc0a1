"""The experiment loop: strategies x grid points x runs x batches, results.json, comparison table.

The loop only orchestrates: for each strategy it builds a ``StreamProgram`` (``cljax.stream``:
the pure, compiled batch step and evaluation), and for each *chunk* of members (with
``vmap_runs`` every run and grid point of the strategy at once; without, one at a time) it
builds batch B_i's arrays, calls the step, records what the step measured, and writes a
checkpoint. A run is a pure function of (config, run index, key), so it gives the same numbers
alone or stacked with others, and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import pickle
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax import callbacks as callbacks_lib
from cljax import checkpoint, compile_time, diagnostics, engine, mesh, metrics, monitor, pretraining, stream
from cljax import grid as grid_lib
from cljax import workdir as workdir_lib
from cljax.config import ConfigError, strategy_grid, strategy_hparams, strategy_names, validate, validate_point
from cljax.files import write_json_atomic  # also re-exported: the results writer
from cljax.hparams import gridable
from cljax.models import ModelContractError, build_model, check_model
from cljax.models.pretrained import merge_pretrained, restore_params
from cljax.scenarios import DataError, Dataset, Scenario, build_scenario, load_dataset, nc_capacity
from cljax.strategies import Strategy, StreamShape, make_strategy, strategy_spec


def data_capacity(dataset: Dataset, config, union: bool) -> int:
    """Rows to pad every batch to: the largest training set any run can produce.

    Benchmarks with official batches (``dataset.protocol``: CORe50, CIFAR splits)
    report it themselves (the largest batch, or cumulative set, over their runs).
    """
    if dataset.protocol is not None:
        return dataset.protocol.capacity(union)
    return nc_capacity(
        dataset.train_y,
        dataset.num_classes,
        config.classes_per_batch,
        config.first_batch_classes,
        config.num_batches,
        union,
    )


@dataclasses.dataclass(frozen=True)
class Heads:
    """Logit masks for training on B_i and for evaluating after B_i (App. A heads, MT oracle)."""

    kind: str  # maximal | expanding | multi (MT)
    scenario: Scenario
    multi_fit: str = "task"  # MT training: task (each example's own task head) | seen (Strategy.multi_head_fit)

    def train_mask(self, i: int) -> np.ndarray:
        mask = np.zeros(self.scenario.num_classes, bool)
        if self.kind == "maximal":
            mask[:] = True
        elif self.kind == "expanding":
            mask[self.scenario.seen_classes(i)] = True
        else:
            mask[list(self.scenario.batches[i].classes)] = True
        return mask

    def fit_mask(self, i: int) -> np.ndarray:
        """MT: the table of task heads (each example trains its own task's, ``task_index``), or with
        ``multi_fit='seen'`` every class seen so far (the strategy's loss splits them); else B_i's head."""
        if self.kind != "multi":
            return self.train_mask(i)
        if self.multi_fit == "seen":
            mask = np.zeros(self.scenario.num_classes, bool)
            mask[self.scenario.seen_classes(i)] = True
            return mask
        return self.task_table()

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


def cached_when_hashable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` remembering its last results for hashable arguments: every strategy of a job asks the
    same of the same model (flax modules hash by their fields); a model with unhashable fields is
    asked again each time."""
    cached = functools.lru_cache(maxsize=16)(fn)

    @functools.wraps(fn)
    def call(*args):
        try:
            hash(args)
        except TypeError:
            return fn(*args)
        return cached(*args)

    call.cache_clear = cached.cache_clear
    return call


@cached_when_hashable  # a model that passed is not checked again for the job's next strategy
def check_model_once(model, input_shape: tuple[int, ...], num_classes: int, classifier: str) -> None:
    check_model(model, input_shape, num_classes, classifier)


def head_kind(config, hp, strategy: Strategy) -> str:
    if config.setting == "mt":
        return "multi"
    return strategy.default_head if hp.head == "default" else hp.head


def parameter_shapes(model, input_shape):
    return _parameter_shapes(model, tuple(input_shape))  # a tuple: the cache needs hashable arguments


@cached_when_hashable
def _parameter_shapes(model, input_shape: tuple[int, ...]):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape))))


def has_convolutions(model, input_shape) -> bool:
    return any(leaf.ndim == 4 for leaf in jax.tree.leaves(parameter_shapes(model, input_shape)))  # HWIO kernels


# vmap_runs=auto on CPU: stacked weights up to this size stay in the caches of a small CPU, and
# vmapping saves each run's per-step dispatch; larger stacks are memory-bound and run slower
# vmapped (measured: BUILD_NOTES.md, "Runs in one program").
CPU_VMAP_BYTES = 8 * 2**20


def step_loop(choice: str, model, input_shape) -> str:
    """``auto``: the step loop on the host for convolutional models on CPU (XLA:CPU runs
    convolutions inside a compiled while loop many times slower, jax-ml/jax#12868), else
    inside the compiled program."""
    if choice != "auto":
        return choice
    if jax.default_backend() != "cpu":
        return "device"
    return "host" if has_convolutions(model, input_shape) else "device"


def use_vmap(choice: str, model, input_shape, num_members: int = 1) -> bool:
    """``vmap_runs=auto``: vmapped runs on accelerators. On CPU only for dense models whose stacked
    parameters (the members on one device) fit ``CPU_VMAP_BYTES``: a vmapped convolution becomes a
    grouped one (several times slower on XLA:CPU), and a large stack runs memory-bound (measured:
    BUILD_NOTES.md; the default job gains 1.26x vmapped, split Fashion-MNIST loses 1.4x)."""
    if choice != "auto":
        return choice == "true"
    if jax.default_backend() != "cpu":
        return True
    if has_convolutions(model, input_shape):
        return False
    shapes = parameter_shapes(model, input_shape)
    per_device = -(-num_members // jax.device_count())
    return per_device * sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes)) <= CPU_VMAP_BYTES


def feature_cache_allowed(choice: str, model, input_shape) -> bool:
    """``feature_cache``: on, off, or auto (on when the body's features do not depend on the mode:
    then the head-only fit on cached features equals the masked full fit)."""
    if choice != "auto":
        return choice == "on"
    return stream.features_are_deterministic(model, tuple(input_shape))


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Members trained together: runs x grid-point indices."""

    runs: tuple[int, ...]
    points: tuple[int, ...]


@dataclasses.dataclass
class StrategyJob:
    """What one strategy needs for all its grid points and runs: entries, program, arrays."""

    name: str
    config: Any
    strategy: Strategy
    points: list[dict[str, Any]]  # grid values per point ([{}] without a grid)
    hparams: list[Any]  # merged values (ConfigDict) per point
    program: stream.StreamProgram
    traced: dict[str, jax.Array]  # [G] traced hyperparameters
    capacity: int
    head: str
    vmap: bool
    layers: list[str]

    @classmethod
    def build(
        cls,
        config,
        name: str,
        dataset: Dataset,
        progress: monitor.ProgressDisplay | None = None,
        points: list[dict[str, Any]] | None = None,
        num_batches: int | None = None,
    ) -> StrategyJob:
        """The job of strategy ``name``: its grid points are the config's grid, or ``points`` (a list of
        {field: value} of traced fields, e.g. values that are not a product of axes). ``num_batches``
        (T; None: from run 0's stream) and the dataset size the states of the strategies that need
        them (``StreamShape``: the rehearsal memories)."""
        spec = strategy_spec(name)
        if points is None:
            points = strategy_grid(config, name)
        else:
            points = [dict(p) for p in points]
            for point in points:
                validate_point(config, name, point)
        merged = [strategy_hparams(config, name, point) for point in points]
        static = {k: merged[0][k] for k in spec.static_hparams(merged[0])}
        if num_batches is None:
            num_batches = build_scenario(config, 0, dataset).num_batches
        grid_max = {k: max(float(m[k]) for m in merged) for k in spec.traced_names() if gridable(spec.hparams[k])}
        shape = StreamShape(
            tuple(dataset.input_shape), str(dataset.train_x.dtype), dataset.num_classes, num_batches, grid_max
        )
        first = merged[0]  # training fields that fix the program (batch size, optimizer) are not gridded
        model = build_model(config, dataset.num_classes)
        try:  # the model contract, before anything is trained (cljax.models)
            check_model_once(model, tuple(dataset.input_shape), dataset.num_classes, config.classifier)
        except ModelContractError as e:
            raise ConfigError(f"model={config.model!r}: {e}") from None
        strategy = make_strategy(name, static, stream=shape, classifier=config.classifier, model=model)
        tx = strategy.transform(engine.make_optimizer(first.optimizer, first.momentum))
        pretrained = restore_params(config.init_checkpoint) if config.init_checkpoint else None
        fresh_head = config.init_head == "fresh"
        if pretrained is not None:  # checks the checkpoint against the model's shapes now (ConfigError)
            x = jnp.zeros((1,) + tuple(dataset.input_shape), jnp.float32)
            shapes = jax.eval_shape(lambda k: model.init({"params": k}, x), jax.random.key(0))
            merge_pretrained(shapes, pretrained, fresh_head=fresh_head, classifier=config.classifier)
        program = stream.StreamProgram(
            strategy,
            model,
            tx,
            batch_size=first.batch_size,
            num_classes=dataset.num_classes,
            input_shape=tuple(dataset.input_shape),
            eval_chunk=config.eval_batch_size,
            loop=step_loop(config.step_loop, model, dataset.input_shape),
            feature_cache=config.feature_cache != "off",
            pretrained=pretrained,
            fresh_head=fresh_head,
            progress=progress.update if progress is not None else None,
            x_divisor=dataset.x_divisor,
            compute_dtype=config.compute_dtype,
            classifier=config.classifier,
        )
        if program.freezes_body() and config.feature_cache == "auto":
            program = dataclasses.replace(
                program, feature_cache=feature_cache_allowed("auto", model, dataset.input_shape)
            )
        vmap = use_vmap(config.vmap_runs, model, dataset.input_shape, config.num_runs * len(points))
        members = (config.num_runs, len(points)) if vmap else (1, 1)  # the shape of every chunk
        program = dataclasses.replace(program, layout=mesh.plan(config.mesh, *members, first.batch_size))
        if program.layout is not None and program.layout.data > 1 and not strategy.data_parallel:
            raise ConfigError(
                f"mesh={config.mesh!r} splits mini-batches over {program.layout.data} devices, which strategy "
                f"{name!r} does not support (its steps add rows of their own); use mesh=runs:N"
            )
        names = stream.TRACED_TRAINING_FIELDS + spec.traced_names()
        return cls(
            name=name,
            config=config,
            strategy=strategy,
            points=points,
            hparams=merged,
            program=program,
            traced=stream.traced_hparams([m.to_dict() for m in merged], names),
            capacity=data_capacity(dataset, config, strategy.training_data == "union"),
            head=head_kind(config, first, strategy),
            vmap=vmap,
            layers=program.layer_names(),
        )

    def entry(self, point: int) -> str:
        return grid_lib.entry_name(self.name, self.points[point])

    def padding(self, chunk: Chunk) -> int:
        """Idle runs added to a chunk so that the mesh's runs axis divides its runs (``cljax.mesh``)."""
        layout = self.program.layout
        return 0 if layout is None or layout.member_axis != 0 else layout.padded_runs - len(chunk.runs)

    def chunks(self, num_runs: int) -> list[Chunk]:
        """All members at once when vmapped, else one member at a time (grid point by grid point)."""
        if self.vmap:
            return [Chunk(tuple(range(num_runs)), tuple(range(len(self.points))))]
        return [Chunk((run,), (point,)) for point in range(len(self.points)) for run in range(num_runs)]


def device_memory_bytes() -> int:
    """The first local device's memory limit (accelerators), else the host's physical memory (CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(job: StrategyJob, dataset: Dataset, num_runs: int) -> None:
    """Refuses (``ConfigError``) a job whose mini-batches alone cannot fit on the device: every member
    trained at once holds a float32 mini-batch of ``batch_size`` rows. An estimate from below (the
    activations come on top): it catches a mistyped batch size before anything is written."""
    members = (num_runs * len(job.points)) if job.vmap else 1
    row = 4 * int(np.prod(dataset.input_shape))
    need = members * job.program.batch_size * row
    have = device_memory_bytes()
    if need > have:
        raise ConfigError(
            f"{job.name}: batch_size={job.program.batch_size} needs at least {need / 2**30:.1f} GiB for its "
            f"mini-batches ({members} member(s) x batch_size x {row} bytes); the device has {have / 2**30:.1f} GiB"
        )


def is_primary() -> bool:
    """Process 0 of a multi-host job (or the only process): the one that writes results and reports."""
    return jax.process_index() == 0


def run_key(config, run: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(config.seed), run)


def batch_inputs(job: StrategyJob, scenarios: list[Scenario], heads: list[Heads], keys, i: int) -> stream.BatchInputs:
    """Batch B_i of every run of a chunk, padded to the job's capacity and stacked over runs."""
    num_classes, num_batches = scenarios[0].num_classes, scenarios[0].num_batches
    data, counts, sizes = [], [], []
    for scenario, head in zip(scenarios, heads, strict=True):
        x, y = scenario.training_set(i, union=job.strategy.training_data == "union")
        arrays = {"x": engine.pad_to(x, job.capacity), "y": engine.pad_to(y, job.capacity)}
        if head.kind == "multi":  # each example trains its own task's head (Cumulative mixes tasks)
            arrays["mask_index"] = engine.pad_to(head.task_index(y), job.capacity)
        data.append(arrays)
        counts.append(np.bincount(y, minlength=num_classes).astype(np.float32))
        sizes.append([len(b.y) if j <= i else 0 for j, b in enumerate(scenario.batches)])
    classes = np.zeros((len(scenarios), num_classes), bool)
    seen = np.zeros_like(classes)
    for r, scenario in enumerate(scenarios):
        classes[r, list(scenario.batches[i].classes)] = True
        seen[r, scenario.seen_classes(i)] = True
    return stream.BatchInputs(
        index=jnp.int32(i),
        data={k: np.stack([d[k] for d in data]) for k in data[0]},
        num_examples=jnp.asarray([int(c.sum()) for c in counts], jnp.int32),
        classes=jnp.asarray(classes),
        seen_classes=jnp.asarray(seen),
        class_counts=jnp.asarray(np.stack(counts)),
        batch_sizes=jnp.asarray(np.asarray(sizes, np.int32).reshape(len(scenarios), num_batches)),
        logit_mask=jnp.asarray(np.stack([h.train_mask(i) for h in heads])),
        fit_mask=jnp.asarray(np.stack([h.fit_mask(i) for h in heads])),
        run_keys=keys,
    )


def place_inputs(program: stream.StreamProgram, inputs: stream.BatchInputs) -> stream.BatchInputs:
    """A batch's arrays on the devices with their sharding, once per batch (``cljax.mesh``)."""
    return stream.BatchInputs(inputs.index, *(program.place(field, mesh.RUN) for field in inputs[1:]))


def place_test_images(program: stream.StreamProgram, test_x: np.ndarray) -> jax.Array:
    """The test images on the devices, once per chunk: shared, or per run ([R, N, ...])."""
    return program.place(test_x, mesh.RUN if test_x.ndim == len(program.input_shape) + 2 else None)


def place_eval(program: stream.StreamProgram, test: stream.EvalInputs) -> stream.EvalInputs:
    """An evaluation's masks and labels on the devices (the images are placed already)."""
    return stream.EvalInputs(test.x, *(program.place(a, mesh.RUN) for a in test[1:]))


def eval_inputs(scenarios: list[Scenario], heads: list[Heads], test_x, i: int) -> stream.EvalInputs:
    tables, indices = zip(*(h.eval_masks(i) for h in heads), strict=True)
    return stream.EvalInputs(
        x=test_x,
        y=jnp.asarray(np.stack([s.test_y for s in scenarios])),
        mask_table=jnp.asarray(np.stack(tables)),
        mask_index=jnp.asarray(np.stack(indices)),
    )


def shared_test_images(scenarios: list[Scenario]) -> np.ndarray:
    """The runs' test images: one array when they are the same, else stacked [R, N, ...]."""
    if all(s.test_x is scenarios[0].test_x for s in scenarios):
        return scenarios[0].test_x
    return np.stack([s.test_x for s in scenarios])


def start_record(scenario: Scenario, run: int, head: str) -> dict[str, Any]:
    return {
        "run": run,
        "class_order": list(scenario.class_order),
        "batch_classes": scenario.batch_classes,
        "head": head,
        "accuracy": [],
        "seen_accuracy": [],
        "accuracy_matrix": [],
        "train_examples": [],
        "train_seconds": [],
        "loss": [],
        "steps": [],
        "confusion_matrices": [],
        "diverged": None,
    }


def add_batch(record: dict, scenario: Scenario, i: int, cm: np.ndarray, num_examples: int, seconds: float) -> None:
    record["accuracy"].append(float(np.trace(cm) / cm.sum()))
    record["seen_accuracy"].append(metrics.class_set_accuracy(cm, scenario.seen_classes(i)))
    record["accuracy_matrix"].append([metrics.class_set_accuracy(cm, b.classes) for b in scenario.batches])
    record["train_examples"].append(num_examples)
    record["train_seconds"].append(seconds)
    record["confusion_matrices"].append(cm.tolist())


def divergence(metrics_host: dict[str, np.ndarray], r: int, g: int, i: int) -> dict | None:
    """What ``record["diverged"]`` says when member (r, g) failed in batch i; None if it did not."""
    bad_step = int(metrics_host["nonfinite_step"][r, g])
    if bad_step >= 0:
        return {"batch": i, "step": bad_step, "reason": "loss or gradient not finite"}
    if not bool(metrics_host["params_finite"][r, g]):
        return {"batch": i, "step": None, "reason": "parameters not finite after after_batch"}
    return None


@dataclasses.dataclass
class ChunkProgress:
    """A chunk in flight; a checkpoint holds exactly this (with the states)."""

    states: engine.TrainState  # [R, G]
    records: list[list[dict]]  # [R][G] JSON-native run records
    alive: np.ndarray  # bool [R, G]: not diverged
    next_batch: int  # 0-based index of the first batch still to train


def train_chunk(
    job: StrategyJob,
    chunk: Chunk,
    scenarios: list[Scenario],
    progress: ChunkProgress,
    on_batch: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[ChunkProgress], None] | None = None,
    display: monitor.ProgressDisplay | None = None,
    on_diverged: Callable[[int, int, dict], None] | None = None,
) -> ChunkProgress:
    """Trains and evaluates the remaining batches of a chunk's members; returns their final progress.

    Divergence guard: a member whose loss or gradient turns non-finite in the fit, or whose
    parameters are not finite after ``after_batch``, stops with ``record["diverged"]`` set
    (``batch``, ``step`` or None, ``reason``); its state stays that of the batch before, and the
    other members go on. ``on_diverged(run, point, record)`` hears of it at once, before the
    batch's checkpoint (which then holds the dead member's last good state).
    """
    program = job.program
    scenarios = scenarios + [scenarios[-1]] * job.padding(chunk)  # idle runs that fill the mesh
    heads = [Heads(job.head, s, job.strategy.multi_head_fit) for s in scenarios]
    keys = jnp.stack([run_key(job.config, r) for r in padded_runs(job, chunk)])
    traced = program.place({k: np.asarray(v)[list(chunk.points)] for k, v in job.traced.items()}, mesh.GRID)
    test_x = place_test_images(program, shared_test_images(scenarios))
    states, records, alive = progress.states, progress.records, progress.alive.copy()
    num_batches = scenarios[0].num_batches
    for i in range(progress.next_batch, num_batches):
        inputs = place_inputs(program, batch_inputs(job, scenarios, heads, keys, i))
        if display is not None:
            display.begin(f"{job.name:<11} {runs_label(chunk.runs)} batch {i + 1}/{num_batches}")
        start = time.perf_counter()
        states, batch_metrics = program.train_batch(states, inputs, traced, program.place(alive, mesh.MEMBER))
        jax.block_until_ready(states)
        seconds = time.perf_counter() - start
        cms = mesh.to_host(program.evaluate(states, place_eval(program, eval_inputs(scenarios, heads, test_x, i))))
        host = mesh.to_host(batch_metrics._asdict())
        num_examples = mesh.to_host(inputs.num_examples)
        for r, run in enumerate(chunk.runs):
            for g, point in enumerate(chunk.points):
                if not alive[r, g]:
                    continue
                record = records[r][g]
                failed = divergence(host, r, g, i)
                if failed is not None:
                    record["diverged"] = failed
                    alive[r, g] = False
                    if on_diverged is not None:
                        on_diverged(run, point, record)
                    continue
                add_batch(record, scenarios[r], i, cms[r, g], int(num_examples[r]), seconds)
                record["loss"].append(float(host["loss"][r, g]))
                # Optimizer steps of the batch (a record resumed from an older checkpoint starts without them).
                record.setdefault("steps", []).append(int(host["steps"][r, g]))
                max_f = job.hparams[point].get("max_f", float("inf"))
                importance = None
                if job.strategy.importance is not None:
                    importance = (
                        host["importance_F"][r, g],
                        host["importance_F_hat"][r, g],
                        host["saturated"][r, g],
                        max_f,
                    )
                diagnostics.record_batch(record, job.layers, host["weight_change"][r, g], importance)
        progress = ChunkProgress(states, records, alive, next_batch=i + 1)
        if on_checkpoint is not None:
            on_checkpoint(progress)
        if on_batch is not None:
            for r, run in enumerate(chunk.runs):
                for g, point in enumerate(chunk.points):
                    record = records[r][g]
                    if record["diverged"] is None:
                        on_batch(
                            {
                                "strategy": job.entry(point),
                                "run": run,
                                "batch": i,
                                "num_batches": num_batches,
                                "accuracy": record["accuracy"][-1],
                                "seen_accuracy": record["seen_accuracy"][-1],
                                "loss": record["loss"][-1],
                                "total_steps": sum(record["steps"]),
                                "seconds": seconds,
                                "accuracy_row": record["accuracy_matrix"][-1],
                            }
                        )
        if not alive.any():
            break
    return ChunkProgress(states, records, alive, next_batch=num_batches)


def runs_label(runs: tuple[int, ...]) -> str:
    """'run 3' or 'runs 0,1,2'."""
    return f"run {runs[0]}" if len(runs) == 1 else f"runs {','.join(str(r) for r in runs)}"


def padded_runs(job: StrategyJob, chunk: Chunk) -> tuple[int, ...]:
    """The chunk's runs and the idle copies of its last run that fill the mesh (``StrategyJob.padding``)."""
    return chunk.runs + (chunk.runs[-1],) * job.padding(chunk)


def start_chunk(job: StrategyJob, chunk: Chunk, scenarios: list[Scenario]) -> ChunkProgress:
    """A chunk before its first batch: initial weights from the runs' keys, empty records; idle
    padding runs (``padded_runs``) are not alive and have no records."""
    keys = jnp.stack([run_key(job.config, r) for r in padded_runs(job, chunk)])
    states = job.program.init(keys, len(chunk.points))
    records = [
        [start_record(s, run, job.head) for _ in chunk.points] for s, run in zip(scenarios, chunk.runs, strict=True)
    ]
    alive = np.zeros((len(keys), len(chunk.points)), bool)
    alive[: len(chunk.runs)] = True
    return ChunkProgress(states, records, alive, next_batch=0)


def run_stream(job: StrategyJob, dataset: Dataset, runs: list[int], point: int = 0, **kwargs) -> list[dict]:
    """The records of ``runs`` at grid point ``point`` (one chunk, no checkpoints): the library's
    way to run a strategy without a workdir."""
    return [row[0] for row in run_members(job, dataset, runs, [point], **kwargs)]


def run_members(
    job: StrategyJob, dataset: Dataset, runs: list[int], points: list[int] | None = None, **kwargs
) -> list[list[dict]]:
    """The records [run][point] of ``runs`` x ``points`` (default: every grid point) trained together
    as one chunk, without a workdir or checkpoints. A pre-trained protocol (``pretrain.slice``) needs its
    weights given: ``init_checkpoint``, or a job from ``with_pretrained``."""
    if pretraining.needs_pretraining(job.config) and job.program.pretrained is None:
        raise ConfigError(
            f"pretrain.slice={job.config.pretrain.slice!r} trains from pre-trained weights, which only a workdir "
            "job (cljax.main, run_experiment) makes; give --config.init_checkpoint (scripts/pretrain.py --slice)"
        )
    points = list(range(len(job.points))) if points is None else points
    chunk = Chunk(tuple(runs), tuple(points))
    scenarios = [build_scenario(job.config, r, dataset) for r in runs]
    return train_chunk(job, chunk, scenarios, start_chunk(job, chunk, scenarios), **kwargs).records


def log_line(text: str) -> None:
    """A line on stdout from process 0 (the only process on one host)."""
    if is_primary():
        print(text, flush=True)


def print_progress(event: dict) -> None:
    callbacks_lib.ConsoleLogger().on_batch(event)


TABLE_LEGEND = (
    "final accuracy: after the last batch, fixed test set ({runs}); average: mean accuracy over the "
    "batches; forgetting: mean drop from each batch's best accuracy (lower is better); BWT: backward transfer"
)


def comparison_table(results: dict) -> str:
    """The printed summary: one row per strategy (grid point), a legend line below; the ± std
    column appears only when some entry has more than one run."""
    summaries = {name: e["summary"] for name, e in results["strategies"].items() if e.get("summary")}
    runs = {len(s.get("final_accuracy_per_run", [0])) for s in summaries.values()}
    spread = max(runs, default=1) > 1
    width = 20 if spread else 15
    lines = [f"{'strategy':<12}{'final accuracy':>{width}}{'average':>10}{'forgetting':>12}{'BWT':>9}"]
    for name, s in summaries.items():
        final = f"{s['final_accuracy_mean']:>12.3f}" + (f" ± {s['final_accuracy_std']:.3f}" if spread else "")
        lines.append(
            f"{name:<12}{final:>{width}}{s['average_accuracy_mean']:>10.3f}{s['forgetting_mean']:>12.3f}"
            f"{s['bwt_mean']:>9.3f}"
        )
    count = " or ".join(str(n) for n in sorted(runs)) or "1"
    described = f"mean ± std over {count} runs" if spread else f"{count} run"
    lines.append(TABLE_LEGEND.format(runs=described))
    return "\n".join(lines)


def prepare(config, dataset: Dataset | None = None) -> tuple[Dataset, list[str]]:
    """Validates the config and reads the data (unless ``dataset`` is given: arrays in memory,
    ``cljax.api.train``); raises ConfigError/DataError before any training. The dataset returned is
    the stream's: without ``pretrain.slice``'s images (``cljax.pretraining``)."""
    dataset, names = read_data(config, dataset)
    return pretraining.stream_dataset(config, dataset), names


def read_data(config, dataset: Dataset | None = None) -> tuple[Dataset, list[str]]:
    """``prepare`` before the pre-training slice is held out: every training image."""
    validate(config)
    if dataset is not None:
        return dataset, strategy_names(config)
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
        build_scenario(config, 0, pretraining.stream_dataset(config, dataset))  # the class split against the data
    except (ConfigError, DataError):
        raise
    except ValueError as e:
        raise ConfigError(f"classes_per_batch/first_batch_classes/num_batches: {e}") from None
    return dataset, strategy_names(config)


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


def _report_divergence(checkpoints: checkpoint.Checkpoints, record: dict, name: str, kept_step, num_batches) -> None:
    """Keeps the run's last good checkpoint (the batch before the bad one), names it in the
    record (relative to the workdir) and prints the message."""
    diverged = record["diverged"]
    kept = kept_step if diverged["batch"] > 0 else None
    if kept is not None:
        checkpoints.keep(kept)
    diverged["checkpoint_step"] = kept
    diverged["checkpoint"] = None if kept is None else os.path.join(checkpoint.CHECKPOINTS_DIR, str(kept))
    path = None if kept is None else checkpoints.path(kept)
    log_line(divergence_message(name, record["run"], diverged, num_batches, path))


BATCHES_CSV = "batches.csv"  # one row per batch (cljax.callbacks.CSVLogger)


def clear_workdir(workdir: str) -> None:
    """``--config.overwrite=True`` on another config's workdir: removes what this program writes into
    it (config.json, checkpoints/, runs/, results.json, diagnostics_*.npz, report/, tensorboard/),
    nothing else (the lock file stays: it is held)."""
    for directory in (checkpoint.CHECKPOINTS_DIR, checkpoint.RUNS_DIR, "report", "tensorboard"):
        shutil.rmtree(os.path.join(workdir, directory), ignore_errors=True)
    here = glob.escape(workdir)
    outputs = [
        os.path.join(here, checkpoint.CONFIG_FILE),
        os.path.join(here, checkpoint.RESULTS_FILE),
        os.path.join(here, BATCHES_CSV),
        diagnostics.diagnostics_path(here, "*"),
    ]
    for path in [p for pattern in outputs for p in glob.glob(pattern)]:
        os.unlink(path)


def warn(text: str) -> None:
    """One line on stderr from process 0."""
    if is_primary():
        print(f"warning: {text}", file=sys.stderr, flush=True)


def finished_records(workdir: str, config) -> dict[tuple[str, int], dict]:
    """Every finished run's record by (results entry, run): from ``runs/`` (one file per finished chunk),
    and from results.json for runs missing there (a workdir's results.json holds this config's runs:
    ``check_workdir``). A damaged file gets one warning line; its runs are trained again."""
    finished: dict[tuple[str, int], dict] = {}
    if os.path.exists(os.path.join(workdir, checkpoint.RESULTS_FILE)):
        try:
            saved = diagnostics.read_results(workdir)
            if not checkpoint.config_differences(saved["config"], config.to_dict()):
                for entry, values in saved["strategies"].items():
                    finished.update({(entry, int(record["run"])): record for record in values.get("runs", [])})
        except (OSError, ValueError, KeyError, TypeError, zlib.error) as e:
            warn(f"{os.path.join(workdir, checkpoint.RESULTS_FILE)} cannot be read ({e}); its runs are trained again")
    from_files, damaged = checkpoint.load_finished(workdir)
    finished.update(from_files)
    for path, why in damaged:
        warn(f"{path} is damaged ({why}); runs missing elsewhere are trained again")
    return finished


def newest_checkpoint(checkpoints: checkpoint.Checkpoints) -> int | None:
    """The newest intact step; damaged newer ones are removed, with one warning line."""
    step, damaged = checkpoints.newest_intact()
    if damaged:
        instead = f"resuming from {checkpoints.path(step)}" if step is not None else "no intact checkpoint is left"
        reasons = "; ".join(f"{checkpoints.path(s)}: {why}" for s, why in damaged)
        warn(f"skipping damaged checkpoint(s) ({reasons}); {instead}")
        if is_primary():
            checkpoints.discard(s for s, _ in damaged)
    return step


def add_finished(results: dict, members: list[tuple[str, dict]], chunk: Chunk, job: StrategyJob) -> None:
    """A finished chunk's records into ``results`` (runs in order) and its entries' summaries."""
    for entry_name, record in members:
        entry = results["strategies"][entry_name]
        entry["runs"] = sorted([*entry["runs"], record], key=lambda rec: rec["run"])
    for point in chunk.points:
        entry = results["strategies"][job.entry(point)]
        complete = [rec for rec in entry["runs"] if rec["diverged"] is None]
        entry["summary"] = metrics.summarize(complete) if complete else None


def preflight(
    config, workdir: str, display: monitor.ProgressDisplay | None = None, dataset: Dataset | None = None
) -> tuple[Dataset, list[str], dict[str, StrategyJob]]:
    """Every check of a job, before anything is written: the config's fields, the data files, the
    workdir's path and contents (another config's results), and each strategy's program (the
    init_checkpoint's shapes, the mesh, the mini-batches' memory). Raises ConfigError/DataError
    (one sentence); reads only. The dataset returned is the stream's (``prepare``)."""
    return _preflight(config, workdir, display, dataset)[1:]


def _preflight(config, workdir: str, display, dataset: Dataset | None):
    """``preflight``, with every training image first (the pre-training slice's source)."""
    full, names = read_data(config, dataset)
    dataset = pretraining.stream_dataset(config, full)
    workdir_lib.check_path(workdir)
    jobs = {}
    num_batches = build_scenario(config, 0, dataset).num_batches
    for name in names:
        jobs[name] = StrategyJob.build(config, name, dataset, display, num_batches=num_batches)
        check_memory(jobs[name], dataset, config.num_runs)
    checkpoint.check_workdir(workdir, config)  # reads only: a refusal leaves the workdir as it was
    return full, dataset, names, jobs


def with_pretrained(config, workdir: str, full: Dataset, jobs: dict[str, StrategyJob]) -> dict[str, StrategyJob]:
    """The pre-trained protocol (``pretrain.slice`` all10/half5 without init_checkpoint): process 0
    pre-trains on the slice of ``full``, or reuses the workdir's cached checkpoint
    (``cljax.pretraining.pretrained_params``); every job then starts from it."""
    if not pretraining.needs_pretraining(config):
        return jobs
    if is_primary():
        pretraining.pretrained_params(config, full, workdir, log=log_line)
    mesh.sync("pre-trained")
    params = restore_params(pretraining.cache_path(config, workdir))
    return {
        name: dataclasses.replace(job, program=dataclasses.replace(job.program, pretrained=params))
        for name, job in jobs.items()
    }


def run_experiment(
    config,
    workdir: str,
    log: Callable[[dict], None] = print_progress,
    show_progress: bool = True,
    callbacks: Sequence[Any] = (),
    dataset: Dataset | None = None,
) -> dict:
    """``run_job`` with its compile and wall times measured: a line per strategy, and
    ``<workdir>/timings.json`` (seconds of tracing, lowering, XLA compilation and cache reads, per
    strategy and for the job; results.json stays free of timings that differ between reruns)."""
    with compile_time.CompileClock() as clock:
        timings: dict[str, Any] = {"strategies": {}}
        results = run_job(config, workdir, log, show_progress, callbacks, dataset, clock, timings)
        if "wall_seconds" not in timings:  # another process wrote timings.json
            finish_timings(timings, clock)
    log_line(f"compiling took {timings['compile']['total']:.1f} s of the job's {timings['wall_seconds']:.1f} s")
    return results


def finish_timings(timings: dict, clock: compile_time.CompileClock) -> None:
    """The job's wall and compile seconds so far, beside the per-strategy ones."""
    timings.update(wall_seconds=round(clock.elapsed, 3), compile=compile_time.since(clock.snapshot()))


def run_job(
    config,
    workdir: str,
    log: Callable[[dict], None],
    show_progress: bool,
    callbacks: Sequence[Any],
    dataset: Dataset | None,
    clock: compile_time.CompileClock,
    timings: dict,
) -> dict:
    """Runs every strategy, grid point and run of ``config``; writes ``<workdir>/results.json`` (and
    the per-batch diagnostics beside it) after each chunk of runs, a checkpoint after each batch,
    TensorBoard scalars after each batch when ``tensorboard`` is installed, and ``<workdir>/report/``
    at the end (``cljax.report``).

    Everything is validated and the workdir checked before anything is written. A checkpoint
    holds the chunk's states and records and every finished run, so a workdir holding checkpoints
    of the same config resumes from its last completed batch (exactly: a run's randomness derives
    from its key alone); one holding another config is refused unless ``config.overwrite``.

    After each batch, ``log(event)`` (the console), ``<workdir>/batches.csv``, TensorBoard and every
    one of ``callbacks`` (``cljax.callbacks``: a ``Callback`` or a function of the event) get the
    batch's event. ``dataset`` (arrays in memory) replaces reading ``config.dataset``.
    """
    primary = is_primary()
    display = monitor.ProgressDisplay() if show_progress and primary else None
    full, dataset, names, jobs = _preflight(config, workdir, display, dataset)
    outputs = (log, display, callbacks, clock, timings)
    if not primary:
        mesh.sync("workdir checked")  # no process writes before every process has read the workdir
        jobs = with_pretrained(config, workdir, full, jobs)
        return _run_jobs(config, workdir, dataset, names, jobs, *outputs)
    with workdir_lib.WorkdirLock(workdir):  # one job per workdir, for the whole job
        if checkpoint.check_workdir(workdir, config):  # again under the lock: another job may have written
            clear_workdir(workdir)  # overwrite=True, and the workdir holds another config's results
        mesh.sync("workdir checked")
        jobs = with_pretrained(config, workdir, full, jobs)  # after the checks: the pre-train writes
        return _run_jobs(config, workdir, dataset, names, jobs, *outputs)


def _run_jobs(
    config,
    workdir: str,
    dataset: Dataset,
    names: list[str],
    jobs: dict,
    log,
    display,
    callbacks: Sequence[Any],
    clock: compile_time.CompileClock,
    timings: dict,
) -> dict:
    """``run_job`` once everything is validated and the workdir locked and checked."""
    from cljax import report  # matplotlib: imported only when a job runs

    primary = is_primary()
    num_batches = build_scenario(config, 0, dataset).num_batches
    if primary and not os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE)):
        write_json_atomic(os.path.join(workdir, checkpoint.CONFIG_FILE), config.to_dict())
    finished = finished_records(workdir, config)
    checkpoints = checkpoint.Checkpoints(os.path.join(workdir, checkpoint.CHECKPOINTS_DIR))
    latest = newest_checkpoint(checkpoints)
    mesh.sync("checkpoints checked")
    saved = checkpoints.progress(latest) if latest is not None else None
    results: dict[str, Any] = {"config": config.to_dict(), "strategies": {}}
    in_flight = [rec for row in saved["records"] for rec in row] if saved else []
    for record in [*finished.values(), *in_flight]:
        if record["diverged"] and record["diverged"]["checkpoint_step"] is not None:
            checkpoints.keep(record["diverged"]["checkpoint_step"])
    outputs = [log]
    if primary:  # process 0 alone writes
        outputs += [
            callbacks_lib.CSVLogger(os.path.join(workdir, BATCHES_CSV)),
            callbacks_lib.TensorBoardLogger(os.path.join(workdir, "tensorboard")),
        ]
    batch_outputs = callbacks_lib.CallbackList([*outputs, *callbacks])
    on_batch = batch_outputs.on_batch

    chunk_index = 0
    for name in names:
        job, started, compiled = jobs[name], time.perf_counter(), clock.snapshot()
        for point, values in enumerate(job.points):
            entry = results["strategies"].setdefault(job.entry(point), {"runs": []})
            if values:
                entry.update(strategy=name, hparams=dict(values))
        for chunk in job.chunks(config.num_runs):
            k, chunk_index = chunk_index, chunk_index + 1
            members = [(job.entry(point), run) for run in chunk.runs for point in chunk.points]
            if all(member in finished for member in members):
                add_finished(results, [(entry, finished[entry, run]) for entry, run in members], chunk, job)
                continue
            scenarios = [build_scenario(config, r, dataset) for r in chunk.runs]
            progress = start_chunk(job, chunk, scenarios)
            if saved is not None and saved["chunk"] == k:
                states = checkpoints.restore(latest, progress.states)
                progress = ChunkProgress(states, saved["records"], np.asarray(saved["alive"], bool), saved["batch"] + 1)
                log_line(
                    f"{name} {runs_label(chunk.runs)}: resuming after batch {progress.next_batch}/{num_batches} "
                    f"from {checkpoints.path(latest)}"
                )

            def save(chunk_progress: ChunkProgress, k: int = k) -> None:
                batch = chunk_progress.next_batch - 1
                payload = {
                    "chunk": k,
                    "batch": batch,
                    "records": chunk_progress.records,
                    "alive": chunk_progress.alive.tolist(),
                }
                checkpoints.save(k * num_batches + batch, chunk_progress.states, payload)

            def diverged(run: int, point: int, record: dict, k: int = k, job: StrategyJob = job) -> None:
                kept = k * num_batches + record["diverged"]["batch"] - 1
                _report_divergence(checkpoints, record, job.entry(point), kept, num_batches)

            final = train_chunk(
                job,
                chunk,
                scenarios,
                progress,
                on_batch=on_batch,
                on_checkpoint=save,
                display=display,
                on_diverged=diverged,
            )
            done = [
                (job.entry(point), final.records[r][g])
                for r in range(len(chunk.runs))
                for g, point in enumerate(chunk.points)
            ]
            add_finished(results, done, chunk, job)
            if primary:
                checkpoint.save_finished(workdir, k, done)  # before the next chunk's first checkpoint
                diagnostics.write_results(workdir, results)  # results.json + diagnostics_<strategy>.npz
        spent = {"wall_seconds": round(time.perf_counter() - started, 3)}
        spent["compile"] = compile_time.since(clock.snapshot(), compiled)
        timings["strategies"][name] = spent
        log_line(f"{name}: {spent['wall_seconds']:.1f} s, of which compiling {spent['compile']['total']:.1f} s")
    checkpoints.close()
    batch_outputs.close()  # every batch was flushed already
    if primary:
        diagnostics.write_results(workdir, results)  # also when a resumed workdir had nothing left to do
        if config.report:
            started = time.perf_counter()
            report.write_report(workdir)
            timings["report_seconds"] = round(time.perf_counter() - started, 3)
        finish_timings(timings, clock)
        write_json_atomic(os.path.join(workdir, "timings.json"), timings)  # under the workdir lock, as results
    mesh.sync("results written")
    return results
