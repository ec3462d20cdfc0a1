"""The rehearsal baselines of sec. 4.4 (REHE, GEM, iCaRL): their memories, herding, GEM's projection,
the nearest-mean-of-exemplars classifier, and each strategy end to end against Naive on split digits."""

from __future__ import annotations

import itertools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.config import ConfigError, base_config, strategy_hparams, validate
from cljax.engine import MASKED_LOGIT, TrainState
from cljax.models import HEAD
from cljax.scenarios import load_dataset
from cljax.strategies import StreamShape, gem, icarl, make_strategy, rehe
from cljax.strategies import memory as mem
from tests.helpers import SPLIT_DIGITS_EPOCHS, batch_context, split_digits_final_accuracy, split_digits_record, traced

NUM_CLASSES = 10
NUM_BATCHES = 5
CAPACITY = 60  # rows per batch buffer
STREAM = StreamShape((3,), "uint8", NUM_CLASSES, NUM_BATCHES)
PARAMS = {"params": {HEAD: {"kernel": jnp.zeros((3, NUM_CLASSES)), "bias": jnp.zeros((NUM_CLASSES,))}}}


def stream_batch(i: int, rows: int, name: str, memory_size: float):
    """Batch i of a 5 x 2 split: ``rows`` examples of classes 2i and 2i+1, each image (uint8, 3
    values) encoding its batch, label and row so that a stored slot can be traced back to its row."""
    y = np.array([2 * i + (r % 2) for r in range(rows)], np.int32)
    x = np.zeros((CAPACITY, 3), np.uint8)
    x[:rows] = np.stack([np.full(rows, i), y, np.arange(rows)], axis=1)
    return batch_context(
        i,
        y=y,
        num_classes=NUM_CLASSES,
        x=jnp.asarray(x),
        capacity=CAPACITY,
        num_batches=NUM_BATCHES,
        hparams=traced(name, memory_size=memory_size),
        seen=range(2 * i + 2),
        apply_fn=identity_features,
    )


def identity_features(params, x, train=False, method=None):
    """A stand-in network whose features (and logits) are its float input."""
    del params, train, method
    return x.astype(jnp.float32)


def assert_rows_from_batches(memory: mem.Memory) -> None:
    """Every valid slot holds a real row of the batch it claims, with that row's label."""
    x, y, valid, batch = (np.asarray(a) for a in (memory.x, memory.y, memory.valid, memory.batch))
    np.testing.assert_array_equal(x[valid, 0], batch[valid])
    np.testing.assert_array_equal(x[valid, 1], y[valid])
    stored = {(int(b), int(r)) for b, r in zip(batch[valid], x[valid, 2], strict=True)}
    assert len(stored) == int(valid.sum()), "a row was stored twice"


def stored_rows(memory: mem.Memory, below_batch: int) -> set[tuple[int, ...]]:
    """The stored images of the batches before ``below_batch``."""
    x = np.asarray(memory.x)[np.asarray(memory.valid)]
    return {tuple(int(v) for v in r) for r in x if r[0] < below_batch}


def class_ranks(memory: mem.Memory, label: int) -> dict[tuple[int, ...], int]:
    """Stored image -> its herding rank, for the exemplars of class ``label``."""
    x, rank, valid, y = (np.asarray(a) for a in (memory.x, memory.rank, memory.valid, memory.y))
    keep = valid & (y == label)
    return {tuple(int(v) for v in r): int(k) for r, k in zip(x[keep], rank[keep], strict=True)}


def run_updates(name: str, update, memory_size: float, rows=(55, 50, 30, 60, 45)):
    """The memory after each batch of a 5-batch stream (``update(state, ctx)``, jitted once: a second
    trace raises)."""
    strategy = make_strategy(name, {"memory_size": memory_size}, stream=STREAM)
    state = TrainState(params={}, opt_state=(), strategy_state=strategy.init(PARAMS))
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)  # two members: the update is vmapped
    traces = []
    step = jax.jit(lambda s, c: (traces.append(1), jax.vmap(update, in_axes=(0, None))(s, c))[1])
    memories = []
    for i, n in enumerate(rows):
        states = step(states, stream_batch(i, n, name, memory_size))
        memories.append(jax.tree.map(lambda a: a[0], states.strategy_state["memory"]))
    assert len(traces) == 1, "the memory update recompiled between batches"
    return memories


def test_rehe_memory_is_balanced_over_the_batches_seen():
    """Footnote 6: after B_i the memory holds ⌊memory_size / i⌋ examples of every batch seen, stored
    uint8 in its fixed slots; the examples of an earlier batch are a subset of what it held before."""
    memories = run_updates("rehe", rehe.refill, memory_size=50)
    for i, memory in enumerate(memories):
        assert memory.x.dtype == jnp.uint8 and memory.x.shape == (50, 3) and memory.valid.shape == (50,)
        quota = 50 // (i + 1)
        counts = np.asarray(mem.counts(memory, memory.batch, NUM_BATCHES))
        np.testing.assert_array_equal(counts, [quota] * (i + 1) + [0] * (NUM_BATCHES - i - 1))
        assert_rows_from_batches(memory)
        if i:
            assert stored_rows(memory, below_batch=i) <= stored_rows(memories[i - 1], below_batch=i)


def test_gem_memory_holds_memory_size_over_t_per_batch_in_its_own_slots():
    """GEM: ⌊memory_size / T⌋ examples of each batch, written into that batch's slots, so that the
    memory reaches its budget only after the last batch."""
    memories = run_updates("gem", gem.store_batch, memory_size=52)  # 10 per batch (2 slots never used)
    for i, memory in enumerate(memories):
        assert memory.x.dtype == jnp.uint8 and memory.x.shape == (50, 3)
        counts = np.asarray(mem.counts(memory, memory.batch, NUM_BATCHES))
        np.testing.assert_array_equal(counts, [10] * (i + 1) + [0] * (NUM_BATCHES - i - 1))
        valid, batch = np.asarray(memory.valid), np.asarray(memory.batch)
        np.testing.assert_array_equal(np.nonzero(valid)[0] // 10, batch[valid])  # batch k in slots [10k, 10k + 10)
        assert_rows_from_batches(memory)
    # An earlier batch's examples never change.
    first = lambda m: np.asarray(m.x)[:10]  # noqa: E731
    np.testing.assert_array_equal(first(memories[0]), first(memories[-1]))


def test_icarl_memory_holds_memory_size_over_seen_classes_per_class():
    """iCaRL: after B_i, ⌊memory_size / t⌋ exemplars of each of the t classes seen (the size stays
    fixed); an old class keeps the first of its exemplars (herding order)."""
    memories = run_updates("icarl", icarl.update_exemplars, memory_size=40)
    for i, memory in enumerate(memories):
        assert memory.x.dtype == jnp.uint8 and memory.x.shape == (40, 3)
        seen = 2 * i + 2
        counts = np.asarray(mem.counts(memory, memory.y, NUM_CLASSES))
        np.testing.assert_array_equal(counts, [40 // seen] * seen + [0] * (NUM_CLASSES - seen))
        assert_rows_from_batches(memory)
        if i:  # class 0's exemplars now are its first ones (lowest herding ranks) of before
            before, after = class_ranks(memories[i - 1], 0), class_ranks(memory, 0)
            assert set(after) <= set(before) and sorted(after.values()) == list(range(len(after)))


def test_herding_picks_the_example_that_keeps_the_running_mean_closest():
    """iCaRL Alg. 4 on a hand-made set. Class 0's features are 1, 2, -1, 6, -3 (on one axis; mean 1):
    herding picks 1 (closest to the mean), then 2 (mean of {1, 2} = 1.5), then -1 ({1, 2, -1}: 0.67),
    then 6 ({1, 2, -1, 6}: 2, nearer 1 than {1, 2, -1, -3}: -0.25), although -3 is nearer the class
    mean than 6 is. Class 1 is herded independently; an ineligible row exactly at the mean is never picked."""
    rows = [  # (feature on axis 0, label, eligible)
        (6.0, 0, True),
        (50.0, 1, True),
        (-3.0, 0, True),
        (1.0, 0, False),  # padding: exactly class 0's mean
        (2.0, 0, True),
        (52.0, 1, True),
        (1.0, 0, True),
        (-1.0, 0, True),
        (51.2, 1, True),
    ]
    f = jnp.asarray([[v, 0.0] for v, _, _ in rows], jnp.float32)
    labels = jnp.asarray([c for _, c, _ in rows], jnp.int32)
    eligible = jnp.asarray([e for _, _, e in rows])
    ranks = np.asarray(icarl.herding_ranks(f, labels, eligible, jnp.int32(4), 3))
    # class 0: 1 -> 2 -> -1 -> 6 (quota 4: -3 left out); class 1 (mean 51.07): 51.2 -> 50 -> 52.
    np.testing.assert_array_equal(ranks, [3, 1, -1, -1, 1, 2, 0, 2, 0])


def herding_reference(f, labels, eligible, quota, num_classes):
    """iCaRL Alg. 4 as written, in float64, one class at a time: the mean of the chosen rows plus a
    candidate, compared with the class mean."""
    f = np.asarray(f, np.float64)
    ranks = np.full(len(f), -1)
    for c in range(num_classes):
        rows = np.flatnonzero(eligible & (labels == c))
        if not len(rows):
            continue
        mean, chosen = f[rows].mean(0), np.zeros(f.shape[1])
        for k in range(min(quota, len(rows))):
            left = rows[ranks[rows] < 0]
            distance = np.sum(((chosen + f[left]) / (k + 1) - mean) ** 2, axis=1)
            pick = left[np.argmin(distance)]
            ranks[pick], chosen = k, chosen + f[pick]
    return ranks


@pytest.mark.parametrize("kind", ["gaussian", "non-negative"])
def test_herding_equals_algorithm_4_as_written_on_random_normalised_features(kind):
    """The expanded, matmul form of each step (``herding_ranks``) picks what the direct distance
    between running and class means picks (float64), on random L2-normalised rows. Non-negative
    rows (as after a ReLU) are nearly parallel: a form that cancelled large terms would pick
    differently there."""
    rng = np.random.default_rng(0)
    n = 1500
    if kind == "gaussian":
        f = rng.normal(size=(n, 16)) + rng.normal(size=(4, 16))[rng.integers(0, 4, n)]
    else:
        f = rng.random((n, 64))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    labels = rng.integers(0, 4, n).astype(np.int32)
    eligible = rng.random(n) < 0.9
    quota = 60
    got = icarl.herding_ranks(
        jnp.asarray(f, jnp.float32), jnp.asarray(labels), jnp.asarray(eligible), jnp.int32(quota), 5
    )
    np.testing.assert_array_equal(np.asarray(got), herding_reference(f, labels, eligible, quota, 5))


def dual_objective(q, b, v):
    return 0.5 * v @ q @ v + b @ v


def brute_force_dual(m, g, margin):
    """GEM's dual in float64 by enumerating active sets: min ½ vᵀ(MMᵀ + εI)v + (Mg)ᵀv, v ≥ margin.
    On each face (v_k = margin for k in the bound set) the free coordinates solve a linear system;
    the optimum is the feasible face solution of least objective (the QP is strictly convex)."""
    k = m.shape[0]
    q = m @ m.T + gem.EPSILON * np.eye(k)
    b = m @ g
    best, best_value = None, np.inf
    for bound in itertools.product([False, True], repeat=k):
        bound = np.array(bound)
        v = np.full(k, margin)
        free = ~bound
        if free.any():
            rhs = -(b[free] + q[np.ix_(free, bound)] @ v[bound])
            v[free] = np.linalg.solve(q[np.ix_(free, free)], rhs)
        if np.all(v >= margin - 1e-12) and dual_objective(q, b, v) < best_value:
            best, best_value = v, dual_objective(q, b, v)
    return best


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gem_projection_solves_the_dual_qp(k):
    """On random instances with 1-3 past batches (gradients that conflict with some of them): the
    compiled solver's dual equals the brute-force reference, and the projected gradient
    g̃ = Mᵀv + g satisfies the constraints ⟨g̃, g_k⟩ ≥ 0 (up to the ridge term ε v_k)."""
    rng = np.random.default_rng(k)
    solve = jax.jit(gem.project)
    dual = jax.jit(gem.solve_dual)
    checked = 0
    for trial in range(40):
        m = rng.normal(size=(k, 8))
        g = rng.normal(size=8) - 1.5 * m[trial % k]  # pushed against one past gradient
        margin = [0.0, 0.5][trial % 2]
        mg = m @ g
        if not np.any(mg < 0):
            continue
        checked += 1
        want = brute_force_dual(m, g, margin)
        active = jnp.ones(k, bool)
        m32, g32 = jnp.asarray(m, jnp.float32), jnp.asarray(g, jnp.float32)
        v = np.asarray(dual(m32 @ m32.T, m32 @ g32, active, margin))
        np.testing.assert_allclose(v, want, rtol=2e-3, atol=2e-4 * (1 + np.abs(want).max()))
        q = m @ m.T + gem.EPSILON * np.eye(k)
        assert dual_objective(q, mg, v.astype(np.float64)) <= dual_objective(q, mg, want) + 1e-4 * (
            1 + abs(dual_objective(q, mg, want))
        )
        projected = np.asarray(solve(g32, m32, active, margin), np.float64)
        np.testing.assert_allclose(projected, m.T @ want + g, rtol=1e-3, atol=1e-3)
        assert np.all(m @ projected >= -gem.EPSILON * want - 1e-3), m @ projected
    assert checked >= 15


def test_gem_projection_leaves_agreeing_gradients_and_ignores_inactive_constraints():
    m = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])
    g = jnp.asarray([1.0, 2.0, 3.0])
    # Row 2 conflicts (⟨g, g_2⟩ = -3) but is not a past batch with a memory: g is kept as it is.
    np.testing.assert_array_equal(gem.project(g, m, jnp.asarray([True, True, False]), 0.5), g)
    out = gem.project(g, m, jnp.asarray([True, True, True]), 0.0)
    assert float(jnp.dot(out, m[2])) >= -1e-2 and not np.allclose(out, g)
    # The inactive constraints' dual variables are zero: a projection against rows 0 and 2 only.
    v = gem.solve_dual(m @ m.T, m @ g, jnp.asarray([True, False, True]), 0.0)
    assert float(v[1]) == 0.0 and float(v[2]) > 0.0


def test_gem_projection_of_a_pytree_equals_the_projection_of_the_raveled_gradients():
    """``project`` works leaf by leaf on gradient pytrees (M: each leaf stacked on a leading K axis):
    the same g̃ as projecting the raveled vectors, leaf for leaf, with and without a conflict."""
    rng = np.random.default_rng(0)
    shapes = {"dense": {"kernel": (6, 4), "bias": (4,)}, "head": {"kernel": (4, 3)}}

    def draw(*lead):
        return {
            layer: {name: jnp.asarray(rng.normal(size=(*lead, *shape)), jnp.float32) for name, shape in leaves.items()}
            for layer, leaves in shapes.items()
        }

    m_tree, active = draw(3), jnp.asarray([True, True, False])
    rows = [jax.flatten_util.ravel_pytree(jax.tree.map(lambda a, k=k: a[k], m_tree))[0] for k in range(3)]
    flat_rows = jnp.stack(rows)
    conflicts = 0
    for trial in range(6):
        g_tree = draw()
        if trial % 2:  # pushed against row 0: a conflict
            g_tree = jax.tree.map(lambda g, rows: g - 2.0 * rows[0], g_tree, m_tree)
        g_flat, unravel = jax.flatten_util.ravel_pytree(g_tree)
        conflicts += bool(np.any(np.asarray(active & (flat_rows @ g_flat < 0))))
        got = jax.jit(gem.project)(g_tree, m_tree, active, 0.5)
        want = unravel(gem.project(g_flat, flat_rows, active, 0.5))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    assert conflicts >= 3


def test_nearest_mean_of_exemplars_on_a_toy_case():
    """iCaRL Alg. 1: class means of L2-normalised exemplar features, normalised again; a query goes
    to the nearest mean of its normalised features; a class without exemplars is never chosen.

    Class 0's exemplars (10, 0) and (0, 1) have the normalised mean (1, 1)/√2 (the mean of the raw
    features would point almost along the first axis); class 2's exemplar (1, -1) has (1, -1)/√2."""
    stream = StreamShape((2,), "float32", 3, 1)
    memory = mem.empty_memory(4, stream)
    memory = memory._replace(
        x=jnp.asarray([[10.0, 0.0], [0.0, 1.0], [1.0, -1.0], [0.0, 0.0]]),
        y=jnp.asarray([0, 0, 2, 1], jnp.int32),
        valid=jnp.asarray([True, True, True, False]),
    )
    means, has_mean = icarl.class_means(icarl.features(identity_features, None, memory.x), memory, 3)
    s = np.sqrt(0.5)
    np.testing.assert_allclose(np.asarray(means)[[0, 2]], [[s, s], [s, -s]], atol=1e-6)
    np.testing.assert_array_equal(has_mean, [True, False, True])
    state = TrainState(params=None, opt_state=(), strategy_state={"class_means": means, "has_mean": has_mean})
    # (3, 1) goes to class 0 and (1, -0.2) to class 2 (with the raw-feature mean of class 0,
    # (5, 0.5), it would go to class 0); (0.1, 5) to class 0; (-1, 0.1) is nearer the empty class
    # 1's zero mean than any other, but class 1 is never chosen.
    queries = jnp.asarray([[3.0, 1.0], [1.0, -0.2], [0.1, 5.0], [-1.0, 0.1]])
    scores = np.asarray(icarl.nearest_mean_logits(state, queries, identity_features))
    np.testing.assert_array_equal(scores.argmax(axis=1), [0, 2, 0, 0])
    assert np.all(scores[:, 1] == MASKED_LOGIT)
    q = queries / jnp.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(scores[:, 0], -np.sum((q - jnp.asarray([s, s])) ** 2, axis=1), rtol=1e-5)


@pytest.mark.parametrize("value", [0.0, -10.0, float("inf"), float("nan")])
@pytest.mark.parametrize("name", ["rehe", "gem", "icarl"])
def test_memory_size_must_be_positive_and_finite(name, value):
    config = base_config()
    config.strategies = name
    config[name].memory_size = value
    with pytest.raises(ConfigError, match=rf"^{name}\.memory_size=\S+ is invalid; it must be a finite number > 0$"):
        validate(config)


def test_memory_needs_the_stream_shape():
    with pytest.raises(ValueError, match="sizes its memory by the stream"):
        make_strategy("gem")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def naive_accuracy(digits):
    return split_digits_final_accuracy(digits, "naive")


@pytest.mark.parametrize("name", ["rehe", "gem", "icarl"])
def test_rehearsal_beats_naive_on_split_digits(digits, naive_accuracy, name):
    """Naive keeps only the last batch's 2 classes (about 0.2); a memory of 200 digits keeps the
    earlier classes well above that. iCaRL's epochs run over B_i and its exemplars together: after
    B_i, ⌊200 / t⌋ exemplars of each of the t = 2i classes seen, so each epoch of B_(i+1) takes
    ⌈(n + 2i·⌊200 / 2i⌋) / 32⌉ steps (REHE and GEM: n / 32, their replay is inside each step)."""
    record = split_digits_record(digits, name)
    accuracy = record["accuracy"][-1]
    assert naive_accuracy < 0.3
    assert accuracy > naive_accuracy + 0.35, (name, accuracy, naive_accuracy)
    seen = [2 * i for i in range(len(record["steps"]))]  # classes seen before each batch
    stored = [t * (200 // t) if t and name == "icarl" else 0 for t in seen]
    epoch_rows = np.add(record["train_examples"], stored)
    np.testing.assert_array_equal(record["steps"], SPLIT_DIGITS_EPOCHS * -(-epoch_rows // 32))


@pytest.mark.parametrize("name", ["rehe", "gem", "icarl"])
def test_core50_nc_config_takes_a_rehearsal_strategy_and_memory_size(name):
    """Fig. 9 left: a rehearsal strategy with its memory, trained with Naive's Table 4 cells."""
    from tests.test_paper_configs import load_config

    config = load_config("core50_nc", f"{name},googlenet,4500")
    validate(config)
    hp = strategy_hparams(config, name)
    assert config.strategies == name and hp.memory_size == 4500.0
    assert (hp.epochs_first, hp.lr_first, hp.epochs, hp.lr) == (4, 0.005, 2, 0.0003)  # Table 4, Naive, GoogLeNet
    assert load_config("core50_nc", f"{name},caffenet")[name].memory_size == 2500.0
    with pytest.raises(ConfigError, match="memory='4500' .* is only for rehe, gem, icarl"):
        load_config("core50_nc", "ar1,googlenet,4500")
