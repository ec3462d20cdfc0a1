"""Training and evaluation: one jit-compiled call per incremental batch.

The engine knows nothing of strategies beyond their contract (see
``cljax.strategies.base``): a per-example loss, an optax transformation, and
the parameters to evaluate with. Shapes are fixed per scenario — training data
is padded to a capacity shared by every batch of every run, and the number of
examples, epochs and the logit mask are traced values — so the stream compiles
``fit`` once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from cljax import transforms
from cljax.mesh import to_host

Params = Any
# loss(logits_BxC, minibatch, strategy_state, logit_mask) -> per-example loss [B]; the logits are masked
# already (-1e9 outside the training head); logit_mask (bool, [C] or [B, C]) says which classes the head holds.
LossFn = Callable[[jax.Array, dict[str, jax.Array], Any, jax.Array], jax.Array]
# loss_and_grad(params, minibatch, weights_B) -> (weighted mean task loss, its gradient)
LossAndGrad = Callable[[Params, dict[str, jax.Array], jax.Array], tuple[jax.Array, Params]]
# gradients(state, minibatch, weights_B, key, loss_and_grad) -> (loss, gradient the optimizer gets)
GradientsFn = Callable[[Any, dict[str, jax.Array], jax.Array, jax.Array, LossAndGrad], tuple[jax.Array, Params]]
# union_rows(state) -> (rows, valid_S): the rows a strategy stores ([S, ...], at least the mini-batch's keys)
# that every epoch trains on together with B_i's; only the ``valid`` ones count (iCaRL's exemplars).
UnionRowsFn = Callable[[Any], tuple[dict[str, jax.Array], jax.Array]]

# A fit calls its ``progress`` callback about this many times (plus once at the end).
PROGRESS_UPDATES = 4

# Masked logits get this value: exp() underflows to exactly 0 in float32, and,
# unlike -inf, 0 * MASKED_LOGIT stays finite in soft-target cross-entropies.
MASKED_LOGIT = -1e9


class TrainState(NamedTuple):
    """Everything a run carries from batch to batch (all pytrees of arrays)."""

    params: Params
    opt_state: optax.OptState
    strategy_state: Any


class FitMetrics(NamedTuple):
    loss: jax.Array  # mean task loss over the last epoch's steps
    steps: jax.Array  # optimizer steps taken
    nonfinite_step: jax.Array  # first step whose loss or gradient was not finite; -1 if none


def mask_logits(logits_BxC: jax.Array, mask_C: jax.Array) -> jax.Array:
    """Expanding/multi-head: classes outside ``mask`` (bool, broadcastable) get no probability."""
    return jnp.where(mask_C, logits_BxC, MASKED_LOGIT)


def split_outputs(outputs: Any) -> tuple[jax.Array, tuple[tuple[float, jax.Array], ...]]:
    """A model's training output as (logits, ((weight, aux_logits), ...)).

    Models with auxiliary classifiers (GoogLeNet) return that pair when called
    with ``train=True``; every other model returns the logits alone (no
    auxiliary outputs). Evaluation calls (``train=False``) always return logits.
    """
    if isinstance(outputs, tuple):
        logits, aux = outputs
        return logits, tuple(aux)
    return outputs, ()


def cross_entropy(
    logits_BxC: jax.Array, batch: dict[str, jax.Array], strategy_state: Any, logit_mask: Any = None
) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (the default task loss). The masked
    logits give the classes outside the head zero probability, so the mask itself is not needed."""
    del strategy_state, logit_mask
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["y"])


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every floating-point leaf of ``tree`` is finite (the divergence guard's test)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_optimizer(name: str, momentum: float = 0.0) -> optax.GradientTransformation:
    """Base optimizer with the learning rate in its state (``set_learning_rate``): B_1 and
    B_i>1 use different rates (Tables 4-5), and runs or grid points different ones, without
    recompiling. SGD without momentum keeps no trace: a zero momentum held as a traced value
    would cost a pass over every parameter each step for nothing."""
    if name == "sgd":
        if momentum == 0:
            return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)
        return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=momentum)
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
    raise ValueError(f"optimizer={name!r} is unknown; allowed: adam, sgd")


def set_learning_rate(opt_state: optax.OptState, learning_rate: Any) -> optax.OptState:
    """Writes the learning rate into every injected-hyperparameter state, keeping its dtype."""
    return transforms.set_hyperparams(opt_state, learning_rate=learning_rate)


def pad_to(x: np.ndarray, capacity: int) -> np.ndarray:
    """Zero-pads the leading axis to ``capacity`` (fixed shapes: nothing recompiles)."""
    if len(x) > capacity:
        raise ValueError(f"{len(x)} examples exceed the padded capacity {capacity}")
    pad = np.zeros((capacity - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad])


def strongly_typed(tree: Any) -> Any:
    """``tree`` with every weakly typed leaf made strong (same dtype and values): a restored
    checkpoint is strongly typed, and a jitted step keys its cache on weak types too."""
    return jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype) if getattr(a, "weak_type", False) else a, tree)


def limit_traces(fn: Callable[..., Any], n: int | None) -> Callable[..., Any]:
    """``fn`` (to be jitted) that raises AssertionError when traced more than ``n`` times (None: no
    limit); ``.traces`` counts them. As ``chex.assert_max_traces``, but counted per wrapped
    function: chex counts per definition site, so two programs built by one factory share a count."""
    if n is None:
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        wrapped.traces += 1  # a jitted function's Python body runs only when it is traced
        if wrapped.traces > n:
            raise AssertionError(
                f"{fn.__name__} was traced {wrapped.traces} times (at most {n} expected): an input changed "
                "shape, dtype or weak type, so the program compiled again"
            )
        return fn(*args, **kwargs)

    wrapped.traces = 0
    return wrapped


# ---- Members: runs x grid points, stacked on two leading axes ----
#
# The programs below train several *members* at once: the runs of a strategy (each its own
# class order, data and key) times the points of a hyper-grid (each its own traced
# hyperparameters). States are stacked on two leading axes [R, G]; arrays that depend only
# on the run (training data, masks, keys) carry the [R] axis alone, so grid points share one
# copy of their run's data; hyperparameters carry [G].
MEMBER, RUN, GRID = "member", "run", "grid"
# The named axes of the member stack ``vmap_members`` is tracing (innermost last; () for one member,
# unbatched): what ``any_member`` reduces over.
_member_axes: list[tuple[str, ...]] = []


def any_member(flag: jax.Array) -> jax.Array:
    """Whether ``flag`` (a bool scalar per member) holds for some member of the stack being traced:
    one value for all of them. A ``lax.cond`` on it stays a branch under ``vmap_members``, where a
    per-member predicate would run both branches for every member (REHE skips replaying an empty
    memory). Outside ``vmap_members``, ``flag`` itself."""
    axes = _member_axes[-1] if _member_axes else ()
    if not axes:
        return flag
    return jax.lax.pmax(flag.astype(jnp.int32), axes) > 0


def vmap_members(fn: Callable[..., Any], kinds: Sequence[str | None]) -> Callable[..., Any]:
    """``fn`` on one member, mapped over the [R, G] member axes.

    ``kinds[k]`` says how positional argument k is stacked: ``MEMBER`` ([R, G, ...]), ``RUN``
    ([R, ...]), ``GRID`` ([G, ...]) or None (shared). Outputs are [R, G, ...].

    A stack of one member (R = G = 1, e.g. one run, or one device's share of the runs) calls
    ``fn`` directly on the member: a batch axis of size 1 still turns every matmul into a
    batched one, which XLA:CPU runs ~10% slower (BUILD_NOTES, "Strategy overhead").
    """
    inner = jax.vmap(fn, in_axes=tuple(0 if k in (MEMBER, GRID) else None for k in kinds), axis_name=GRID)
    mapped = jax.vmap(inner, in_axes=tuple(0 if k in (MEMBER, RUN) else None for k in kinds), axis_name=RUN)
    member_axes = {MEMBER: 2, RUN: 1, GRID: 1}

    def one_member(arg, kind):
        if kind is None:
            return arg
        return jax.tree.map(lambda a: a.reshape(a.shape[member_axes[kind] :]), arg)

    def call(*args):
        if len(args) != len(kinds):
            raise TypeError(f"expected {len(kinds)} arguments ({kinds}), got {len(args)}")
        single = all(
            np.shape(leaf)[: member_axes[kind]] == (1,) * member_axes[kind]
            for arg, kind in zip(args, kinds, strict=True)
            if kind is not None
            for leaf in jax.tree.leaves(arg)
        )
        _member_axes.append(() if single else (RUN, GRID))
        try:
            if not single:
                return mapped(*args)
            member = [one_member(arg, kind) for arg, kind in zip(args, kinds, strict=True)]
            return stack_members(fn(*member))
        finally:
            _member_axes.pop()

    return call


def stack_members(tree: Any) -> Any:
    """One run's values as a stack of one member ([1, 1, ...])."""
    return jax.tree.map(lambda a: jnp.asarray(a)[None, None], tree)


def unstack_member(tree: Any, run: int = 0, point: int = 0) -> Any:
    """Member (run, point) of a stacked tree."""
    return jax.tree.map(lambda a: a[run, point], tree)


def make_member_fit(
    apply_fn: Callable[..., jax.Array],
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    loop: str = "device",
    max_traces: int | None = None,
    gradients: GradientsFn | None = None,
    union_rows: UnionRowsFn | None = None,
    layout: Any = None,
) -> Callable[..., tuple[TrainState, FitMetrics]]:
    """Builds ``fit(states, run_data, member_data, num_examples, epochs, logit_mask, keys)``
    for a stack of members ([R, G] leading axes, see ``vmap_members``).

    ``apply_fn(params, x, train=True, rngs=...)`` returns logits, or
    ``(logits, ((weight, aux_logits), ...))`` for a model with auxiliary classifiers: the loss
    is then ``loss_fn`` on the logits plus ``weight`` times ``loss_fn`` on each auxiliary output
    (``split_outputs``). ``run_data`` ([R, capacity, ...]: ``x``, ``y``, ...) and ``member_data``
    ([R, G, capacity, ...]: per-member arrays such as LwF's soft targets) share a padded example
    axis; only the first ``num_examples[r]`` rows of run r are real. ``epochs`` is [R, G].
    ``logit_mask`` is [R, C] bool (the training head), or [R, K, C], a table of heads (multi-task)
    with ``data["mask_index"]`` giving each example's row. Each epoch draws a permutation of
    run r's real rows from ``keys[r]``; the last mini-batch of an epoch may be partial, its
    missing rows weighted zero. A member whose loss or gradient is not finite keeps its last
    good state and stops (divergence guard); the others go on.

    The steps run over the longest member (members with fewer steps idle, their state unchanged),
    with the member step ``vmap``ped inside. ``loop="device"``: the steps run inside compiled
    ``lax.while_loop``s, in ``PROGRESS_UPDATES`` segments of about equal length (a scan would
    need a static length, and Cumulative's batches differ 5x in steps); ``progress(steps_done,
    total_steps)`` (None = off) is called on the host between segments, so no compiled program
    holds a host callback (they could not be kept in the persistent compilation cache).
    ``loop="host"``: one jitted call per mini-batch, for convolutional models on CPU (XLA:CPU runs
    convolutions inside a while loop 10-30x slower, jax-ml/jax#12868).

    ``gradients(state, mini, weights, key, loss_and_grad)`` (None: ``loss_and_grad(state.params,
    mini, weights)``) lets a strategy change a step's gradient: replay stored examples with the
    mini-batch, or project the gradient (rehearsal, sec. 4.4); ``loss_and_grad`` is the task loss
    and its gradient on any mini-batch (the logit mask and auxiliary losses applied as above).

    ``union_rows(state)`` (None: none) adds a member's stored rows to its epochs: each epoch is then a
    permutation of B_i's real rows and the member's valid stored rows together (iCaRL trains on "B_i
    together with the exemplars"), so members of one run draw their own permutations and may take
    different numbers of steps.

    ``layout`` (``cljax.mesh.MemberLayout``, None on one device): the members are sharded over the
    mesh axis ``runs`` (``jax.shard_map``: each device trains its own members) and each mini-batch's
    rows over ``data``: every device of a ``data`` group computes the loss and gradient of its share
    of the rows, and a ``psum`` adds them (the same weighted mean, summed in another order).

    ``max_traces`` (tests): ``limit_traces`` on the compiled functions, which then raise if they
    are traced (compiled) more often, e.g. because a batch changed a shape or dtype.
    """
    tx = optax.with_extra_args_support(tx)
    data_parallel = layout is not None and layout.data > 1
    traced = functools.partial(limit_traces, n=max_traces)
    donate = (0,) if jax.default_backend() != "cpu" else ()  # XLA:CPU does not donate buffers

    def train_step(state: TrainState, mini: dict[str, jax.Array], weights_B, logit_mask, key):
        def weighted_loss_sum(params, mini, weights_B):
            outputs = apply_fn(params, mini["x"], train=True, rngs={"dropout": key})
            logits, aux = split_outputs(outputs)
            # A [K, C] mask is a table of heads, one row per example via mini["mask_index"] (MT).
            mask = logit_mask[mini["mask_index"]] if logit_mask.ndim == 2 else logit_mask
            per_example = loss_fn(mask_logits(logits, mask), mini, state.strategy_state, mask)
            # Auxiliary classifiers (GoogLeNet loss1/loss2): the same per-example loss, weighted.
            for weight, aux_logits in aux:
                aux_loss = loss_fn(mask_logits(aux_logits, mask), mini, state.strategy_state, mask)
                per_example = per_example + weight * aux_loss
            return jnp.sum(per_example * weights_B)

        def loss_and_grad(params, mini, weights_B):
            """The weighted mean task loss over the mini-batch's rows and its gradient."""
            if not data_parallel:
                mean = lambda p: weighted_loss_sum(p, mini, weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)  # noqa: E731
                return jax.value_and_grad(mean)(params)
            # Data parallel: this device's share of the rows, then one psum over the data group.
            share = weights_B.shape[0] // layout.data
            take = lambda a: jax.lax.dynamic_slice_in_dim(a, jax.lax.axis_index("data") * share, share)  # noqa: E731
            local_weights = take(weights_B)
            total, grads = jax.value_and_grad(weighted_loss_sum)(params, jax.tree.map(take, mini), local_weights)
            count = jnp.maximum(jax.lax.psum(jnp.sum(local_weights), "data"), 1.0)
            total, grads = jax.lax.psum((total, grads), "data")
            return total / count, jax.tree.map(lambda g: g / count, grads)

        if gradients is None:
            loss, grads = loss_and_grad(state.params, mini, weights_B)
        else:
            loss, grads = gradients(state, mini, weights_B, jax.random.fold_in(key, 1), loss_and_grad)
        # ``task_grads``: the raw task-loss gradient, for transformations that need it
        # next to the applied update (the SI path tracker); others ignore it.
        updates, opt_state = tx.update(grads, state.opt_state, state.params, task_grads=grads)
        new_state = TrainState(optax.apply_updates(state.params, updates), opt_state, state.strategy_state)
        return new_state, loss, jnp.isfinite(loss) & tree_all_finite(grads)

    def epoch_order(key, epoch, real_L):
        """A permutation of the ``real`` positions (the others last, then ``batch_size`` spare
        zeros so every slice is full) and the epoch's key for dropout."""
        shuffle_key, epoch_key = jax.random.split(jax.random.fold_in(key, epoch))
        noise = jax.random.uniform(shuffle_key, real_L.shape)
        order = jnp.argsort(jnp.where(real_L, noise, 2.0))
        return jnp.concatenate([order, jnp.zeros((batch_size,), order.dtype)]), epoch_key

    def real_rows(num_examples, capacity: int):
        return jnp.arange(capacity) < num_examples

    def stored_rows(state, data):
        """The member's stored rows with the mini-batch's keys, and which are valid."""
        rows, valid = union_rows(state)
        missing = sorted(set(data) - set(rows))
        if missing:
            raise KeyError(f"union_rows returned no {missing}: stored rows need every key of the mini-batch")
        return {k: rows[k].astype(data[k].dtype) for k in data}, valid

    def member_order(state, run_data, member_data, key, epoch, num_examples):
        """An epoch over B_i's real rows (positions below the capacity) and the valid stored rows
        (the positions after it)."""
        _, valid = stored_rows(state, {**run_data, **member_data})
        return epoch_order(key, epoch, jnp.concatenate([real_rows(num_examples, run_data["y"].shape[0]), valid]))

    def member_rows(state, num_examples):
        """Rows in the member's epoch: B_i's real rows and, with ``union_rows``, its valid stored rows."""
        if union_rows is None:
            return num_examples
        return num_examples + jnp.sum(union_rows(state)[1]).astype(num_examples.dtype)

    def gather_rows(state, data, idx):
        """Rows ``idx`` of the epoch: positions below the capacity are B_i's, the others stored."""
        if union_rows is None:
            return jax.tree.map(lambda a: a[idx], data)
        stored, _ = stored_rows(state, data)
        capacity = data["y"].shape[0]
        from_batch = idx < capacity
        batch_idx, stored_idx = jnp.minimum(idx, capacity - 1), jnp.maximum(idx - capacity, 0)

        def pick(a, b):
            return jnp.where(from_batch.reshape((-1,) + (1,) * (a.ndim - 1)), a[batch_idx], b[stored_idx])

        return {k: pick(data[k], stored[k]) for k in data}

    def member_step(state, run_data, member_data, order, s, rows, logit_mask, epoch_key, active):
        """Mini-batch ``s`` of an epoch of ``rows`` rows for one member; applied only where ``active``
        and finite (the partial last mini-batch's missing rows weigh zero)."""
        start = s * batch_size
        idx = jax.lax.dynamic_slice(order, (start,), (batch_size,))
        weights = (start + jnp.arange(batch_size) < rows).astype(jnp.float32)
        mini = gather_rows(state, {**run_data, **member_data}, idx)
        new_state, loss, finite = train_step(state, mini, weights, logit_mask, jax.random.fold_in(epoch_key, s))
        ok = active & finite
        state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
        return state, jnp.where(ok, loss, 0.0), finite

    # Without stored rows a run's members share its epoch permutations; with them each member has its own.
    order_kind = RUN if union_rows is None else MEMBER
    step_members = vmap_members(member_step, (MEMBER, RUN, MEMBER, order_kind, None, MEMBER, RUN, order_kind, MEMBER))
    rows_of_members = vmap_members(member_rows, (MEMBER, RUN))

    def new_orders(states, run_data, member_data, keys, epoch, num_examples):
        if union_rows is None:
            real = jax.vmap(real_rows, in_axes=(0, None))(num_examples, run_data["y"].shape[1])
            return jax.vmap(epoch_order, in_axes=(0, None, 0))(keys, epoch, real)
        kinds = (MEMBER, RUN, MEMBER, RUN, None, RUN)
        return vmap_members(member_order, kinds)(states, run_data, member_data, keys, epoch, num_examples)

    class Carry(NamedTuple):
        states: TrainState
        orders: jax.Array  # [R, L + batch_size] ([R, G, ...] with stored rows): this epoch's permutations
        epoch_keys: jax.Array  # [R] ([R, G] with stored rows)
        loss_sum: jax.Array  # [R, G] task loss summed over this epoch's steps
        last_loss: jax.Array  # [R, G] mean loss of each member's last epoch
        steps: jax.Array  # [R, G] steps applied
        bad: jax.Array  # [R, G] step count at the first non-finite step; -1 if none

    def steps_per_epoch(rows):
        return (rows + batch_size - 1) // batch_size

    def start(states, run_data, member_data, num_examples, epochs, keys) -> Carry:
        """The carry before step 0 (its permutations are drawn at the first step of each epoch)."""
        # The carry is donated to each segment (not on CPU): it must own its buffers. A buffer
        # donated twice, donated and passed again (the keys), or shared with arrays used after the
        # fit (a jitted stage may forward unchanged inputs as outputs) is an error or a loss.
        if donate:
            states = jax.tree.map(jnp.copy, states)
        # Placeholders of the right shapes: the first step of each epoch draws its permutations and keys.
        orders, epoch_keys = jax.eval_shape(new_orders, states, run_data, member_data, keys, 0, num_examples)
        key_data = jnp.zeros(epoch_keys.shape + jax.random.key_data(keys).shape[keys.ndim :], jnp.uint32)
        epoch_keys = jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(keys))
        orders = jnp.zeros(orders.shape, orders.dtype)
        losses = [jnp.zeros(epochs.shape, jnp.float32) for _ in range(2)]
        return Carry(
            states,
            orders,
            epoch_keys,
            *losses,
            jnp.zeros(epochs.shape, jnp.int32),
            jnp.full(epochs.shape, -1, jnp.int32),
        )

    def one_step(carry: Carry, run_data, member_data, epoch, s, num_examples, epochs, logit_mask, keys) -> Carry:
        """Step ``s`` of epoch ``epoch`` for every member: a new epoch's permutation first (s = 0),
        the epoch's mean loss last (after its longest member's final step)."""
        rows = rows_of_members(carry.states, num_examples)  # [R, G]
        member_steps = steps_per_epoch(rows)
        orders, epoch_keys = jax.lax.cond(
            s == 0,
            lambda: new_orders(carry.states, run_data, member_data, keys, epoch, num_examples),
            lambda: (carry.orders, carry.epoch_keys),
        )
        active = (epoch < epochs) & (s < member_steps) & (carry.bad < 0)
        states, loss, finite = step_members(
            carry.states, run_data, member_data, orders, s, rows, logit_mask, epoch_keys, active
        )
        bad = jnp.where((carry.bad < 0) & active & ~finite, carry.steps, carry.bad)
        loss_sum = carry.loss_sum + loss
        ran = epoch < epochs
        epoch_done = s + 1 == jnp.max(member_steps)
        mean = loss_sum / jnp.maximum(member_steps, 1)
        return Carry(
            states,
            orders,
            epoch_keys,
            jnp.where(epoch_done, 0.0, loss_sum),
            jnp.where(epoch_done & ran, mean, carry.last_loss),
            carry.steps + (active & finite),
            bad,
        )

    @traced
    def segment(carry: Carry, run_data, member_data, num_examples, epochs, logit_mask, keys, first, stop) -> Carry:
        """Global steps [first, stop) (epoch = step // longest epoch), while any member is alive and
        has epochs left (on a mesh, a device's members may finish before the longest of all)."""
        max_steps = jnp.max(steps_per_epoch(rows_of_members(carry.states, num_examples)))
        end = jnp.minimum(stop, jnp.max(epochs) * max_steps)

        def body(inner):
            g, carry = inner
            carry = one_step(
                carry, run_data, member_data, g // max_steps, g % max_steps, num_examples, epochs, logit_mask, keys
            )
            return g + 1, carry

        _, carry = jax.lax.while_loop(lambda inner: (inner[0] < end) & jnp.any(inner[1].bad < 0), body, (first, carry))
        return carry

    host_step = one_step
    if layout is not None:
        member, run = layout.spec(MEMBER), layout.spec(RUN)
        order = layout.spec(order_kind)
        carry_specs = Carry(member, order, order, member, member, member, member)
        data_specs = (carry_specs, run, member, run, member, run, run)  # carry ... keys
        segment = layout.shard_map(segment, (*data_specs, P(), P()), carry_specs)
        host_step = layout.shard_map(one_step, (carry_specs, run, member, P(), P(), run, member, run, run), carry_specs)
    jit_segment = jax.jit(segment, donate_argnums=donate)
    jit_step = jax.jit(traced(host_step), donate_argnums=donate)
    jit_rows = jax.jit(rows_of_members)

    def longest_epoch(states, num_examples) -> int:
        """Rows in the longest member's epoch (the stored rows live on the device: one small read)."""
        rows = num_examples if union_rows is None else jit_rows(states, num_examples)
        return int(np.max(to_host(rows)))

    def fit(states, run_data, member_data, num_examples, epochs, logit_mask, keys):
        num_examples = jnp.asarray(num_examples, jnp.int32)
        epochs = jnp.asarray(epochs, jnp.int32)
        max_steps = -(-longest_epoch(states, num_examples) // batch_size)
        max_epochs = int(np.max(to_host(epochs)))
        total = max_epochs * max_steps
        carry = start(states, run_data, member_data, num_examples, epochs, keys)
        if loop == "device":
            interval = max(-(-total // PROGRESS_UPDATES), 1)
            for first in range(0, total, interval):
                stop = min(first + interval, total)
                args = (run_data, member_data, num_examples, epochs, logit_mask, keys)
                carry = jit_segment(carry, *args, jnp.int32(first), jnp.int32(stop))
                if progress is not None:
                    progress(stop, total)
        else:
            interval = max(-(-total // PROGRESS_UPDATES), 1)
            for epoch in range(max_epochs):
                for s in range(max_steps):
                    args = (run_data, member_data, jnp.int32(epoch), jnp.int32(s), num_examples, epochs)
                    carry = jit_step(carry, *args, logit_mask, keys)
                    done = epoch * max_steps + s + 1
                    if progress is not None and (done % interval == 0 or done == total):
                        progress(done, total)
                # After a non-finite step a member's remaining steps are no-ops: the host checks
                # for divergence once per epoch instead of syncing every step.
                if not np.any(to_host(carry.bad) < 0):
                    break
        return carry.states, FitMetrics(carry.last_loss, carry.steps, carry.bad)

    if loop not in ("device", "host"):
        raise ValueError(f"loop={loop!r} is unknown; allowed: device, host")
    fit.compiled = jit_segment if loop == "device" else jit_step  # what a compile-count check looks at
    return fit


def make_fit(
    apply_fn: Callable[..., jax.Array],
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    batch_size: int,
    progress: Callable[[jax.Array, jax.Array], None] | None = None,
    loop: str = "device",
    max_traces: int | None = None,
) -> Callable[..., tuple[TrainState, FitMetrics]]:
    """One run's ``fit(state, data, num_examples, epochs, logit_mask, key)``: ``make_member_fit``
    on a stack of one member. ``data`` is a dict of arrays sharing a padded leading axis
    (``x``, ``y`` and whatever per-example arrays the loss reads); ``logit_mask`` is [C] bool
    or a [K, C] table of heads with ``data["mask_index"]`` (multi-task). One compiled call
    trains all epochs and mini-batches of the batch."""
    member_fit = make_member_fit(apply_fn, tx, loss_fn, batch_size, progress=progress, loop=loop, max_traces=max_traces)

    def fit(state: TrainState, data, num_examples, epochs, logit_mask, key):
        run = lambda a: jnp.asarray(a)[None]  # noqa: E731
        states, metrics = member_fit(
            stack_members(state),
            jax.tree.map(run, data),
            {},
            run(num_examples).astype(jnp.int32),
            stack_members(jnp.asarray(epochs, jnp.int32)),
            run(logit_mask),
            run(key),
        )
        return unstack_member(states), unstack_member(metrics)

    return fit


def chunked_map(fn: Callable[..., jax.Array], chunk: int, *arrays: jax.Array) -> jax.Array:
    """``fn`` over ``chunk`` rows of ``arrays`` at a time (bounded memory); the rows are zero-padded
    to a multiple of ``chunk`` and the padding dropped from the result."""
    n = arrays[0].shape[0]
    chunk = max(min(chunk, n), 1)
    padded = -(-n // chunk) * chunk
    shaped = [
        jnp.concatenate([a, jnp.zeros((padded - n,) + a.shape[1:], a.dtype)]).reshape((-1, chunk) + a.shape[1:])
        for a in arrays
    ]
    out = jax.lax.map(lambda args: fn(*args), tuple(shaped))
    return out.reshape((padded,) + out.shape[2:])[:n]


def predictions(apply_fn, params: Params, x: jax.Array, mask_table_KxC, mask_index, chunk: int = 1000) -> jax.Array:
    """Arg-max predictions, ``chunk`` examples at a time (bounded memory); ``predict`` is its jitted form.

    Example n is classified among the classes ``mask_table[mask_index[n]]``:
    one all-true row is the maximal head, the seen classes the expanding head,
    one row per task with the true task's index the multi-head task oracle.
    """

    def one_chunk(x_chunk, idx_chunk):
        logits = apply_fn(params, x_chunk, train=False)
        return jnp.argmax(mask_logits(logits, mask_table_KxC[idx_chunk]), axis=-1)

    return chunked_map(one_chunk, chunk, x, mask_index)


predict = jax.jit(predictions, static_argnames=("apply_fn", "chunk"))


@functools.partial(jax.jit, static_argnames=("apply_fn", "chunk"))
def features(apply_fn, params: Params, x: jax.Array, chunk: int = 1000) -> jax.Array:
    """Penultimate activations ``apply_fn(params, x, method="features")`` in inference mode,
    ``chunk`` examples at a time: the inputs of a head-only fit on a frozen body."""
    return chunked_map(lambda x_chunk: apply_fn(params, x_chunk, train=False, method="features"), chunk, x)


@functools.partial(jax.jit, static_argnames="num_classes")
def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int) -> jax.Array:
    """[true class, predicted class] counts (int32), computed where the arrays live."""
    chex.assert_equal_shape([labels, preds])
    flat = jnp.asarray(labels, jnp.int32) * num_classes + jnp.asarray(preds, jnp.int32)
    return jnp.zeros(num_classes * num_classes, jnp.int32).at[flat].add(1).reshape(num_classes, num_classes)


def evaluate(
    apply_fn, params: Params, x: jax.Array, y: jax.Array, mask_table_KxC, mask_index, num_classes: int, chunk: int
) -> jax.Array:
    """The confusion matrix of ``params`` on a test set (``predictions``' heads): [C, C] int32.
    Meant to run inside a compiled program (``apply_fn`` need not be hashable)."""
    return confusion_matrix(y, predictions(apply_fn, params, x, mask_table_KxC, mask_index, chunk), num_classes)
