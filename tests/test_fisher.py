"""The per-pattern Fisher without per-pattern gradients (cljax/fisher.py) equals the vmapped one.

Reference: vmap of grad over the patterns, squared, weighted (padding rows zero) and averaged: what
EWC's ``fisher=per_example`` computed before (eq. 8's F^i). Compared at 1e-5 relative on the MLP and
on CifarNet, with padding rows and a logit mask; the layers the fast path covers are checked, so the
comparison cannot pass through the fallback alone.

"1e-5 relative" is per parameter array, in norm: ‖got − reference‖ ≤ 1e-5·‖reference‖. Element by
element, float32 cannot promise it: where a pattern's output gradient δ is a sum that nearly
cancels, either implementation's tiny entries differ from a float64 computation by up to 1e-2
relative (measured on both models, the vmapped reference included), while each array as a whole
agrees with float64 to about 3e-7.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cljax import engine, fisher, transforms
from cljax.models import CifarNetBody, Classifier, MLPBody, apply_function, float_images
from cljax.strategies import make_strategy
from cljax.strategies.ewc import diagonal_fisher
from tests.helpers import batch_context, traced


@functools.partial(jax.jit, static_argnums=0)
def reference_fisher(model, params, x, y, num_examples, mask):
    """Σ_n w_n·g_n² / n with g_n from vmap of grad (one pattern at a time)."""

    def loss(p, x_n, y_n):
        logits = engine.mask_logits(model.apply(p, x_n[None], train=False), mask)
        return engine.cross_entropy(logits, {"y": y_n[None]}, None)[0]

    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)
    w = (jnp.arange(x.shape[0]) < num_examples).astype(jnp.float32)
    return jax.tree.map(lambda g: jnp.einsum("n,n...->...", w, g**2) / num_examples, grads)


def assert_relative_close(got, expected, rtol=1e-5):
    """Per leaf, ‖got − expected‖ ≤ rtol·‖expected‖ (and the same shapes and dtypes)."""
    chex.assert_trees_all_equal_shapes_and_dtypes(got, expected)
    for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected), strict=True):
        g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
        error = np.linalg.norm(g - e) / np.linalg.norm(e)
        assert error <= rtol, f"{jax.tree_util.keystr(path)}: relative error {error:.2e} > {rtol:g}"


def _data(shape, capacity, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((capacity, *shape)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, num_classes, capacity).astype(np.int32))


def _layers(model, params, x, mask):
    losses = lambda p, x, y: engine.cross_entropy(  # noqa: E731
        engine.mask_logits(model.apply(p, x, train=False), mask), {"y": y}, None
    )
    return fisher.find_layers(losses, params, x, jnp.zeros(x.shape[0], jnp.int32))


def _check(model, shape, capacity, num_examples, chunk, mask, expected_layers):
    x, y = _data(shape, capacity, mask.shape[0])
    y = jnp.where(mask[y], y, 0)  # labels inside the training head
    params = jax.jit(model.init)(jax.random.key(1), x[:1])
    layers = _layers(model, params, x[:chunk], mask)
    assert sorted("/".join(layer.path) for layer in layers) == sorted(expected_layers)
    covered = {i for layer in layers for i in (layer.kernel, layer.bias)}
    assert covered == set(range(len(jax.tree.leaves(params))))  # no parameter left to the fallback
    got = diagonal_fisher(model.apply, params, x, y, num_examples, mask, jax.random.key(2), chunk=chunk)
    expected = reference_fisher(model, params, x, y, num_examples, mask)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, params)
    assert_relative_close(got, expected)
    assert all(float(jnp.max(g)) > 0 for g in jax.tree.leaves(got))  # a real comparison, not zeros
    return got


def test_mlp_fisher_equals_the_vmapped_per_pattern_fisher():
    # 784-400-400-10, 37 real rows in 45 (the 8 padding rows must not count), chunks of 16 (the
    # last one partial), two classes outside the head.
    mask = jnp.arange(10) < 8
    _check(Classifier(MLPBody((400, 400)), 10), (28, 28, 1), 45, 37, 16, mask, ["body/fc1", "body/fc2", "head"])


def test_cifarnet_fisher_equals_the_vmapped_per_pattern_fisher():
    mask = jnp.arange(10) != 3
    convs = ["body/conv1", "body/conv2", "body/conv3", "body/conv4"]
    _check(Classifier(CifarNetBody(), 10), (32, 32, 3), 13, 11, 8, mask, convs + ["body/fc1", "head"])


class _Tied(nn.Module):
    """A Dense used twice (weight sharing), a strided convolution, and a parameter of its own."""

    @nn.compact
    def __call__(self, x, train=False):
        del train
        h = nn.relu(nn.Conv(3, (3, 3), strides=2, padding=1, name="conv")(x)).reshape(x.shape[0], -1)
        shared = nn.Dense(h.shape[-1], name="shared")
        h = shared(nn.relu(shared(h)))
        scale = self.param("scale", nn.initializers.ones, (h.shape[-1],))
        return nn.Dense(4, name="head")(h * scale)


def test_unrecognised_parameters_fall_back_to_vmap():
    model, mask = _Tied(), jnp.array([True, True, False, True])
    x, y = _data((6, 6, 2), 10, 4)
    y = jnp.where(mask[y], y, 0)
    params = jax.jit(model.init)(jax.random.key(1), x[:1])
    layers = _layers(model, params, x[:4], mask)
    assert sorted("/".join(layer.path) for layer in layers) == ["conv", "head"]  # "shared" is used twice
    got = diagonal_fisher(model.apply, params, x, y, 7, mask, jax.random.key(2), chunk=4)
    assert_relative_close(got, reference_fisher(model, params, x, y, 7, mask))


def test_fisher_is_vmappable_over_members():
    # EWC's after_batch runs vmapped over runs and grid points: stacked params, masks and counts.
    model = Classifier(MLPBody((32,)), 5)
    x, y = _data((4, 4, 1), 12, 5)
    params = jax.jit(jax.vmap(lambda k: model.init(k, x[:1])))(jax.random.split(jax.random.key(3), 2))
    masks = jnp.array([[True] * 5, [True, True, False, True, True]])
    counts = jnp.array([12, 7], jnp.int32)
    y = jnp.where(masks[1][y], y, 0)
    stacked = jax.vmap(lambda p, n, m: diagonal_fisher(model.apply, p, x, y, n, m, jax.random.key(0), chunk=8))(
        params, counts, masks
    )
    for r in range(2):
        member = jax.tree.map(lambda a, r=r: a[r], params)
        expected = reference_fisher(model, member, x, y, counts[r], masks[r])
        assert_relative_close(jax.tree.map(lambda a, r=r: a[r], stacked), expected)


def test_dense_sums_match_the_outer_products():
    # Σ_n w_n (a_n ⊗ δ_n)² = (w·a²)ᵀ(δ²), written out.
    rng = np.random.default_rng(0)
    a, d, w = rng.standard_normal((5, 3)), rng.standard_normal((5, 2)), np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    kernel, bias = fisher._dense_sums(*(jnp.asarray(v, jnp.float32) for v in (a, d, w)))
    expected = sum(w[n] * np.outer(a[n], d[n]) ** 2 for n in range(5))
    np.testing.assert_allclose(kernel, expected, rtol=1e-6)
    np.testing.assert_allclose(bias, (w[:, None] * d**2).sum(0), rtol=1e-6)


def test_ewc_after_batch_on_stored_uint8_images():
    # Through the strategy as a StreamProgram runs it: uint8 images turned into floats inside the
    # program (apply_function, x_divisor=255), so the first layer's input a is the float image, not
    # the stored bytes. F^i must equal the vmapped Fisher on the float images.
    model, mask = Classifier(MLPBody((24, 16)), 6), jnp.arange(6) < 5
    rng = np.random.default_rng(4)
    stored = jnp.asarray(rng.integers(0, 256, (20, 5, 5, 1)).astype(np.uint8))
    y = jnp.asarray(rng.integers(0, 5, 20).astype(np.int32))
    images = float_images(stored, 255.0)
    params = jax.jit(model.init)(jax.random.key(1), images[:1])
    apply_fn = apply_function(model, x_divisor=255.0)
    losses = lambda p, x, y: engine.cross_entropy(engine.mask_logits(apply_fn(p, x, train=False), mask), {"y": y}, None)  # noqa: E731
    layers = fisher.find_layers(losses, params, stored[:8], y[:8])
    assert sorted("/".join(layer.path) for layer in layers) == ["body/fc1", "body/fc2", "head"]

    strategy = make_strategy("ewc", {"fisher": "per_example", "fisher_batch_size": 8})
    tx = strategy.transform(engine.make_optimizer("sgd"))
    state = engine.TrainState(params, tx.init(params), strategy.init(params))
    ctx = batch_context(0, num_classes=6, hparams=traced("ewc", strength=2.0, max_f=1.0), apply_fn=apply_fn, tx=tx)
    ctx = ctx.replace(data={"x": stored, "y": y}, num_examples=jnp.int32(17), logit_mask=mask)
    new = jax.jit(strategy.after_batch)(state, ctx)
    expected = reference_fisher(model, params, images, y, 17, mask)
    assert_relative_close(new.strategy_state["fisher_sum"], expected)
    # B_1: F̂ = clip(F / 1, max_F) with max_F above every entry, so F̂ is F^1 itself.
    assert_relative_close(transforms.anchor_state(new.opt_state).importance, expected)
