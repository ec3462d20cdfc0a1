"""One batch of a continual-learning stream as a pure function, for a stack of runs and grid points.

``StreamProgram`` ties a strategy (``cljax.strategies.base``) to a model and the engine:

- ``init(run_keys, num_points)`` -> the initial ``TrainState`` of every member, stacked [R, G];
- ``train_batch(states, inputs, hparams, alive) -> (states, BatchMetrics)``: batch B_i for every
  member: the strategy's ``before_batch``, the learning rate of B_1 or B_i>1, the fit (all epochs
  and mini-batches), ``after_batch``, the divergence check and the section-5 diagnostics (weight
  change per layer, importance histograms), in a few compiled programs (``begin``, the fit's
  segments, ``end``) and no per-step host round trip;
- ``evaluate(states, test) -> confusion matrices`` [R, G, C, C], computed on the device.

Members are the runs (leading axis R: each its own class order, training arrays, number of real
examples and key) times the points of a hyper-grid (axis G: each its own traced hyperparameters);
``BatchInputs`` holds arrays only, stacked over runs, so every hook traces once. With one member
(R = G = 1) this is a single run; the experiment loop (``cljax.experiment``) only builds the
arrays, calls these functions, and writes records and checkpoints.

Batch B_i's randomness derives from the run's key alone: ``init_key, key = split(run_key)``,
then ``before, fit, after = split(fold_in(key, i), 3)``; so a run gives the same numbers alone or
stacked with others, interrupted or not.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from cljax import diagnostics, engine, transforms
from cljax.engine import GRID, MEMBER, RUN, TrainState, vmap_members
from cljax.mesh import to_host
from cljax.models import HEAD, apply_function
from cljax.strategies.base import BatchContext, Strategy
from cljax.transforms import path_keys

# Training fields that are traced per grid point (``hparams``), besides a strategy's own.
TRACED_TRAINING_FIELDS = ("lr_first", "lr", "epochs_first", "epochs")


class BatchInputs(NamedTuple):
    """Batch B_i of every run in the stack (leading axis R), as arrays."""

    index: jax.Array  # int32 []: i − 1, the same for every run
    data: dict[str, jax.Array]  # [R, capacity, ...]: x, y (MT: mask_index), zero-padded
    num_examples: jax.Array  # int32 [R]: real rows of data
    classes: jax.Array  # bool [R, C]: classes present in B_i
    seen_classes: jax.Array  # bool [R, C]: classes of B_1..B_i
    class_counts: jax.Array  # float32 [R, C]: real training rows of each class
    batch_sizes: jax.Array  # int32 [R, T]: n_j of B_1..B_i, 0 after
    logit_mask: jax.Array  # bool [R, C]: the training head
    fit_mask: jax.Array  # bool [R, C], or [R, K, C] heads per task (MT, with data["mask_index"])
    run_keys: jax.Array  # [R] the runs' keys


class EvalInputs(NamedTuple):
    """A test set for every run: ``x`` shared ([N, ...]) or per run ([R, N, ...])."""

    x: jax.Array
    y: jax.Array  # int32 [R, N]
    mask_table: jax.Array  # bool [R, K, C]: the heads to classify with
    mask_index: jax.Array  # int32 [R, N]: each example's row of mask_table


class BatchMetrics(NamedTuple):
    """Per member [R, G]: the fit's numbers and the section-5 diagnostics of the batch."""

    loss: jax.Array  # mean task loss of the last epoch
    steps: jax.Array  # optimizer steps applied
    nonfinite_step: jax.Array  # first step whose loss or gradient was not finite; -1 if none
    params_finite: jax.Array  # bool: every parameter finite after after_batch
    weight_change: jax.Array  # [L] mean |Δθ| per layer of the evaluated model (Fig. 13)
    importance_F: jax.Array  # [bins] histogram of F (strategies with importance; else empty)
    importance_F_hat: jax.Array  # [bins] histogram of F̂
    saturated: jax.Array  # fraction of F̂ at max_F (eq. 8, 11)


class Started(NamedTuple):
    """The members after ``begin`` (``before_batch`` and the learning rate), with what the fit and
    the end of the batch need."""

    states: TrainState
    extras: dict[str, jax.Array]  # per-example arrays of the strategy's loss (LwF's soft targets)
    eval_before: Any  # the evaluated parameters before the batch (weight change, Fig. 13)
    epochs: jax.Array  # int32 [R, G]: this batch's epochs
    fit_keys: jax.Array  # [R]: the fit's keys


class Keys(NamedTuple):
    before: jax.Array
    fit: jax.Array
    after: jax.Array


def batch_keys(run_key: jax.Array, index: jax.Array) -> Keys:
    """The keys of batch ``index`` of a run: the same alone, stacked, or after a resume."""
    _, key = jax.random.split(run_key)  # the first half initialises the weights
    return Keys(*jax.random.split(jax.random.fold_in(key, index), 3))


def apply_head(params, features_BxD: jax.Array, train: bool = False, rngs=None, path: str = HEAD) -> jax.Array:
    """The classifier layer (at ``path``) alone on penultimate features: the model of a frozen body's batches."""
    del train, rngs  # the head has no dropout
    head = params["params"]
    for key in path_keys(path):
        head = head[key]
    return nn.Dense(head["kernel"].shape[-1]).apply({"params": head}, features_BxD)


def select_members(ok: jax.Array, new: Any, old: Any) -> Any:
    """Per member [R, G]: ``new`` where ``ok``, else ``old``."""
    return jax.tree.map(lambda n, o: jnp.where(ok.reshape(ok.shape + (1,) * (n.ndim - ok.ndim)), n, o), new, old)


@functools.partial(jax.jit, static_argnums=(0, 1))
def initial_params(model: nn.Module, input_shape: tuple[int, ...], run_key: jax.Array):
    """A run's initial weights: ``model.init`` with the first half of its key (one compilation
    per model, shared by every strategy)."""
    init_key, _ = jax.random.split(run_key)
    return model.init({"params": init_key}, jnp.zeros((1, *input_shape), jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def _features_both_modes(model: nn.Module, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    train = model.apply(params, x, train=True, rngs={"dropout": jax.random.key(2)}, method="features")
    return train, model.apply(params, x, train=False, method="features")


def features_are_deterministic(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether the body's penultimate features are the same in training and inference mode (no
    dropout, no batch statistics): then a frozen body's features can be computed once."""
    params = initial_params(model, tuple(input_shape), jax.random.key(0))
    x = jnp.linspace(-1.0, 1.0, 4 * int(np.prod(input_shape)), dtype=jnp.float32).reshape((4, *input_shape))
    return bool(jnp.array_equal(*_features_both_modes(model, params, x)))


def batch_input_specs(layout) -> BatchInputs:
    """Partition specs of ``BatchInputs``: every field is per run but the shared batch index."""
    run = layout.spec(RUN)
    return BatchInputs(PartitionSpec(), *([run] * (len(BatchInputs._fields) - 1)))


@dataclasses.dataclass(frozen=True)
class StreamProgram:
    """The compiled programs of one strategy: everything static about its runs."""

    strategy: Strategy
    model: nn.Module
    tx: optax.GradientTransformation  # the strategy's transformation of the base optimizer
    batch_size: int
    num_classes: int
    input_shape: tuple[int, ...]
    eval_chunk: int = 1000
    loop: str = "device"  # device: the step loop inside the program | host: a jitted call per step
    feature_cache: bool = True  # frozen-body batches train the head on features computed once
    pretrained: Any = None  # initial params merged into every run's init (config.init_checkpoint)
    fresh_head: bool = False  # config.init_head='fresh': the classifier keeps its fresh initialisation
    x_divisor: float = 1.0  # the dataset's stored images: the model sees x / x_divisor
    compute_dtype: str = "float32"  # float32 | bfloat16 (mixed precision: parameters stay float32)
    layout: Any = None  # cljax.mesh.MemberLayout: members and mini-batches over a device mesh; None: one device
    progress: Callable[[Any, Any], None] | None = None
    max_traces: int | None = None  # tests: fail if a program is traced (compiled) more often
    classifier: str = HEAD  # path of the classifier layer under params['params'] (config.classifier)

    def __post_init__(self):
        # The model as the programs call it: stored images converted inside, in the compute precision.
        object.__setattr__(self, "apply_fn", apply_function(self.model, self.x_divisor, self.compute_dtype))
        options = dict(
            progress=self.progress,
            loop=self.loop,
            max_traces=self.max_traces,
            gradients=self.strategy.gradients,
            union_rows=self.strategy.union_rows,
            layout=self.layout,
        )
        object.__setattr__(
            self, "_fit", engine.make_member_fit(self.apply_fn, self.tx, self.strategy.loss, self.batch_size, **options)
        )
        object.__setattr__(
            self,
            "_head_fit",
            engine.make_member_fit(
                functools.partial(apply_head, path=self.classifier),
                self.tx,
                self.strategy.loss,
                self.batch_size,
                **options,
            ),
        )
        traced = functools.partial(engine.limit_traces, n=self.max_traces)
        object.__setattr__(self, "_init", jax.jit(traced(self._init_members), static_argnames="num_points"))
        member, run, grid = (self._spec(kind) for kind in (MEMBER, RUN, GRID))
        inputs = batch_input_specs(self.layout) if self.layout is not None else None
        stages = {
            "_begin_jit": (self._begin, (member, inputs, grid), (member, member, member, member, run)),
            "_features_jit": (self._cached_features, (member, run), member),
            "_end_jit": (self._end, (member, member, member, member, inputs, grid, member), (member, member)),
        }
        for name, (fn, in_specs, out_specs) in stages.items():
            if self.layout is not None:
                fn = self.layout.shard_map(fn, in_specs, out_specs)
            object.__setattr__(self, name, jax.jit(traced(fn)))
        object.__setattr__(self, "_evaluators", {})

    def _spec(self, kind):
        return None if self.layout is None else self.layout.spec(kind)

    def place(self, tree: Any, kind: str | None) -> Any:
        """Host arrays on the devices, once, as the programs take them: sharded over the mesh
        (``layout.place``: each process transfers only its devices' shards), else on the one device."""
        return jax.device_put(tree) if self.layout is None else self.layout.place(tree, kind)

    # ---- initial states ----

    def _init_member(self, params) -> TrainState:
        return TrainState(params, self.tx.init(params), self.strategy.init(params))

    def _init_members(self, params, num_points: int) -> TrainState:
        states = jax.vmap(self._init_member)(params)  # [R, ...]: grid points share the initial weights
        return jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], num_points, *a.shape[1:])), states)

    def init(self, run_keys: jax.Array, num_points: int = 1) -> TrainState:
        """Every member's initial state, [R, G]: run r's weights from ``run_keys[r]`` (placed on the
        mesh, when there is one, with the members' sharding)."""
        # One call per run of one compiled init (shared by every strategy and the feature probe).
        per_run = [initial_params(self.model, self.input_shape, key) for key in run_keys]
        params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_run)
        if self.pretrained is not None:  # config.init_checkpoint; a head of another size stays fresh
            from cljax.models.pretrained import merge_pretrained

            merge = functools.partial(merge_pretrained, fresh_head=self.fresh_head, classifier=self.classifier)
            params = jax.vmap(lambda p: merge(p, self.pretrained))(params)
        states = engine.strongly_typed(self._init(params, num_points=num_points))
        return self.place(states, MEMBER)

    # ---- one batch ----

    def _context(self, state_kind_args, hp, key) -> BatchContext:
        data, num_examples, classes, seen, counts, sizes, logit_mask, index = state_kind_args
        return BatchContext(
            index=index,
            classes=classes,
            seen_classes=seen,
            class_counts=counts,
            batch_sizes=sizes,
            num_examples=num_examples,
            data=data,
            logit_mask=logit_mask,
            hparams=hp,
            key=key,
            apply_fn=self.apply_fn,
            tx=self.tx,
        )

    def _run_args(self, inputs: BatchInputs) -> tuple:
        return (
            inputs.data,
            inputs.num_examples,
            inputs.classes,
            inputs.seen_classes,
            inputs.class_counts,
            inputs.batch_sizes,
            inputs.logit_mask,
        )

    def _begin(self, states: TrainState, inputs: BatchInputs, hparams: Mapping[str, jax.Array]):
        """``before_batch`` and the batch's learning rate, for every member; also what the end
        of the batch compares with (the evaluated parameters before it)."""

        def begin(state, data, n, classes, seen, counts, sizes, logit_mask, run_key, index, hp):
            ctx = self._context(
                (data, n, classes, seen, counts, sizes, logit_mask, index), hp, batch_keys(run_key, index).before
            )
            state, extras = self.strategy.before_batch(state, ctx)
            lr = jnp.where(index == 0, hp["lr_first"], hp["lr"])
            return state._replace(opt_state=engine.set_learning_rate(state.opt_state, lr)), extras

        kinds = (MEMBER,) + (RUN,) * 7 + (RUN, None, GRID)
        eval_before = vmap_members(self.strategy.eval_params, (MEMBER,))(states)
        started, extras = vmap_members(begin, kinds)(
            states, *self._run_args(inputs), inputs.run_keys, inputs.index, hparams
        )
        # The fit's epochs per member [R, G] (B_1's or B_i>1's) and keys per run [R].
        epochs = jnp.where(inputs.index == 0, hparams["epochs_first"], hparams["epochs"])  # [G]
        epochs = jnp.broadcast_to(epochs[None], (inputs.run_keys.shape[0], epochs.shape[0]))
        fit_keys = jax.vmap(lambda k: batch_keys(k, inputs.index).fit)(inputs.run_keys)
        return started, extras, eval_before, epochs, fit_keys

    def _cached_features(self, states: TrainState, x: jax.Array) -> jax.Array:
        """[R, G, capacity, D]: every member's penultimate features of its run's images."""
        chunk = min(self.eval_chunk, x.shape[1])
        return vmap_members(lambda p, xs: engine.features(self.apply_fn, p, xs, chunk), (MEMBER, RUN))(states.params, x)

    def _end(self, states, before, eval_before, fit_metrics, inputs: BatchInputs, hparams, alive):
        """``after_batch``, the divergence check and the diagnostics; a member that diverged (or was
        dead already) keeps its state from before the batch."""

        def end(state, old_eval, data, n, classes, seen, counts, sizes, logit_mask, run_key, index, hp):
            ctx = self._context(
                (data, n, classes, seen, counts, sizes, logit_mask, index), hp, batch_keys(run_key, index).after
            )
            state = self.strategy.after_batch(state, ctx)
            new_eval = self.strategy.eval_params(state)
            finite = engine.tree_all_finite((state.params, new_eval))
            change = diagnostics.mean_abs_change(old_eval, new_eval)
            hist_f, hist_f_hat, saturated = self._importance(state, hp)
            return state, finite, change, hist_f, hist_f_hat, saturated

        kinds = (MEMBER, MEMBER) + (RUN,) * 7 + (RUN, None, GRID)
        ended, finite, change, hist_f, hist_f_hat, saturated = vmap_members(end, kinds)(
            states, eval_before, *self._run_args(inputs), inputs.run_keys, inputs.index, hparams
        )
        ok = alive & (fit_metrics.nonfinite_step < 0) & finite
        metrics = BatchMetrics(
            fit_metrics.loss,
            fit_metrics.steps,
            fit_metrics.nonfinite_step,
            finite,
            change,
            hist_f,
            hist_f_hat,
            saturated,
        )
        return select_members(ok, ended, before), metrics

    def _importance(self, state: TrainState, hp) -> tuple[jax.Array, jax.Array, jax.Array]:
        if self.strategy.importance is None:
            empty = jnp.zeros((0,), jnp.int32)
            return empty, empty, jnp.float32(0.0)
        report = self.strategy.importance(state)
        max_f = hp.get("max_f", jnp.float32(jnp.inf))
        return (
            diagnostics.log_histogram(report["F"]),
            diagnostics.log_histogram(report["F_hat"]),
            diagnostics.saturated_share(report["F_hat"], max_f),
        )

    def _uses_cached_features(self, states: TrainState) -> bool:
        """Whether every member's body is frozen and cached features give the same fit (not when the
        strategy's epochs take stored rows: those are images, not features)."""
        frozen = transforms.frozen_body(states.opt_state)
        cacheable = frozen is not None and self.feature_cache and self.strategy.union_rows is None
        return cacheable and bool(np.all(to_host(frozen)))

    def train_batch(
        self, states: TrainState, inputs: BatchInputs, hparams: Mapping[str, jax.Array], alive: jax.Array
    ) -> tuple[TrainState, BatchMetrics]:
        """Trains batch ``inputs.index`` for every member ([R, G]); members not ``alive`` (diverged
        earlier) keep their state. ``hparams`` holds [G] arrays: ``lr_first``, ``lr``,
        ``epochs_first``, ``epochs`` and the strategy's traced hyperparameters.

        The composition ``end(fit(begin(...)))`` of the stages below, each a compiled program
        (the fit a few of them, so that the host can show progress between them)."""
        started = self.begin(states, inputs, hparams)
        fitted, fit_metrics = self.fit(started, inputs)
        return self.end(fitted, states, started.eval_before, fit_metrics, inputs, hparams, alive)

    # The stages of ``train_batch``, for looking inside a batch.

    def begin(self, states: TrainState, inputs: BatchInputs, hparams: Mapping[str, jax.Array]) -> Started:
        """``before_batch`` and the learning rate, for every member (``Started``)."""
        return Started(*self._begin_jit(states, inputs, hparams))

    def fit(self, started: Started, inputs: BatchInputs) -> tuple[TrainState, engine.FitMetrics]:
        """All epochs and mini-batches of the batch: (states, ``engine.FitMetrics``) [R, G].

        When every member's body is frozen (``transforms.freeze_body``: CWR, CWR+ after B_1) and
        ``feature_cache`` allows it, the head trains on penultimate features computed once; the
        body's updates are zero either way, so the result is that of the full fit."""
        states, extras = started.states, started.extras
        fit_args = (inputs.num_examples, started.epochs, inputs.fit_mask, started.fit_keys)
        if self._uses_cached_features(states):
            feats = self._features_jit(states, inputs.data["x"])
            run_data = {k: v for k, v in inputs.data.items() if k != "x"}
            return self._head_fit(states, run_data, {**extras, "x": feats}, *fit_args)
        return self._fit(states, inputs.data, extras, *fit_args)

    def end(self, states, before, eval_before, fit_metrics, inputs: BatchInputs, hparams, alive):
        """``after_batch``, the divergence check and the diagnostics: (states, ``BatchMetrics``)."""
        return self._end_jit(states, before, eval_before, fit_metrics, inputs, hparams, alive)

    # ---- evaluation ----

    def classify(self, state: TrainState, x: jax.Array, train: bool = False) -> jax.Array:
        """One member's evaluation scores on ``x``: the strategy's ``logits`` or the evaluated params'."""
        del train
        if self.strategy.logits is not None:
            return self.strategy.logits(state, x, self.apply_fn)
        return self.apply_fn(self.strategy.eval_params(state), x, train=False)

    def _evaluate_members(self, states: TrainState, test: EvalInputs) -> jax.Array:
        x_kind = RUN if test.x.ndim == len(self.input_shape) + 2 else None
        chunk = min(self.eval_chunk, test.y.shape[1])

        def confusion(state, x, y, table, index):
            return engine.evaluate(self.classify, state, x, y, table, index, self.num_classes, chunk)

        return vmap_members(confusion, (MEMBER, x_kind, RUN, RUN, RUN))(
            states, test.x, test.y, test.mask_table, test.mask_index
        )

    def evaluate(self, states: TrainState, test: EvalInputs) -> jax.Array:
        """[R, G, C, C] confusion matrices (true class, predicted class) of the evaluated params."""
        x_kind = RUN if test.x.ndim == len(self.input_shape) + 2 else None  # per run, or one for all
        if x_kind not in self._evaluators:
            fn = self._evaluate_members
            if self.layout is not None:
                run = self._spec(RUN)
                specs = (self._spec(MEMBER), EvalInputs(self._spec(x_kind), run, run, run))
                fn = self.layout.shard_map(fn, specs, self._spec(MEMBER))
            self._evaluators[x_kind] = jax.jit(engine.limit_traces(fn, self.max_traces))
        return self._evaluators[x_kind](states, test)

    def abstract_state(self) -> TrainState:
        """Shapes and dtypes of one member's state (nothing computed)."""
        params = jax.eval_shape(lambda k: initial_params(self.model, self.input_shape, k), jax.random.key(0))
        return jax.eval_shape(self._init_member, params)

    def layer_names(self) -> list[str]:
        """The leaves whose weight change ``BatchMetrics.weight_change`` reports, in its order."""
        return diagnostics.leaf_paths(jax.eval_shape(self.strategy.eval_params, self.abstract_state()))

    def freezes_body(self) -> bool:
        """Whether the strategy's transformation can freeze the body (``transforms.freeze_body``)."""
        return transforms.frozen_body(self.abstract_state().opt_state) is not None


def traced_hparams(points: list[Mapping[str, Any]], names: tuple[str, ...]) -> dict[str, jax.Array]:
    """[G]-stacked arrays of the traced values ``names`` of every grid point (merged values)."""
    out = {}
    for name in names:
        values = np.asarray([p[name] for p in points])
        dtype = jnp.int32 if name in ("epochs_first", "epochs") else jnp.float32
        out[name] = jnp.asarray(values, dtype)
    return out
