"""The paper's CORe50 models (App. B, Table 3; NiN: Table 2) and their Caffe layers.

Parameter counts are checked against hand counts written out layer by layer;
shapes at 128x128 with 50 classes are checked without computing anything
(``jax.eval_shape``), so the big models cost only a trace.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cljax.models import MODELS, build_model
from cljax.models.googlenet import GoogLeNet
from cljax.models.layers import GroupedConv, caffe_output_size, caffe_pool, local_response_norm

NUM_CLASSES = 50
X128 = jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32)


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    from cljax.config import base_config

    config = base_config()
    config.model = name
    for field, value in overrides.items():
        config[field] = value
    return config


def abstract_params(model, x=X128):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x.shape, x.dtype))


def numpy_params(model, x_shape, seed: int = 0):
    """Random params of the model's shapes, drawn with NumPy (fan-in scaled normal).

    Flax's own init compiles one truncated-normal sampler per parameter shape,
    which costs minutes for GoogLeNet on a shared CPU; these tests check the
    forward pass, not the initialiser.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x_shape, jnp.float32))

    def draw(leaf):
        fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 1
        scale = 1.0 / math.sqrt(fan_in) if len(leaf.shape) > 1 else 0.1
        return jnp.asarray(rng.normal(0.0, scale, leaf.shape), jnp.float32)

    return jax.tree.map(draw, shapes)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def conv_params(k: int, c_in: int, c_out: int, groups: int = 1) -> int:
    return k * k * (c_in // groups) * c_out + c_out


def dense_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def intermediate_shapes(model, x=X128) -> dict[str, tuple[int, ...]]:
    """Output shape of every submodule call, keyed by its path ('body/conv1')."""
    params = abstract_params(model, x)

    def run(p, x):
        return model.apply(p, x, capture_intermediates=True, mutable=["intermediates"])[1]

    captured = jax.eval_shape(run, params, jnp.zeros(x.shape, x.dtype))["intermediates"]
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(captured)[0]:
        keys = [k.key for k in path if hasattr(k, "key")]
        if keys[-1] == "__call__" and isinstance(leaf, jax.ShapeDtypeStruct):
            shapes["/".join(keys[:-1])] = leaf.shape
    return shapes


# ---------------------------------------------------------------- CaffeNet


def test_caffenet_parameter_count_matches_hand_count():
    expected = (
        conv_params(11, 3, 96)  # conv1: 11*11*3*96 + 96 = 34,944
        + conv_params(5, 96, 256, groups=2)  # conv2: 5*5*48*256 + 256 = 307,456
        + conv_params(3, 256, 384)  # conv3: 3*3*256*384 + 384 = 885,120
        + conv_params(3, 384, 384, groups=2)  # conv4: 3*3*192*384 + 384 = 663,936
        + conv_params(3, 384, 256, groups=2)  # conv5: 3*3*192*256 + 256 = 442,624
        + dense_params(6 * 6 * 256, 2048)  # fc6: 9216*2048 + 2048 = 18,876,416 (Table 3: 2048)
        + dense_params(2048, 2048)  # fc7: 4,196,352 (Table 3: 2048)
        + dense_params(2048, NUM_CLASSES)  # fc8 = head: 102,450 (Table 3: 50)
    )
    assert expected == 25_509_298
    params = abstract_params(build_model(model_config("caffenet"), NUM_CLASSES))
    assert count(params) == expected
    assert params["params"]["head"]["kernel"].shape == (2048, NUM_CLASSES)
    assert params["params"]["body"]["fc6"]["kernel"].shape == (9216, 2048)


def test_caffenet_shapes_at_128():
    model = build_model(model_config("caffenet"), NUM_CLASSES)
    params = abstract_params(model)
    assert jax.eval_shape(model.apply, params, X128).shape == (2, NUM_CLASSES)
    assert jax.eval_shape(lambda p, x: model.apply(p, x, method="features"), params, X128).shape == (2, 2048)
    shapes = intermediate_shapes(model)
    assert shapes["body/conv1"] == (2, 59, 59, 96)  # (128 - 11) // 2 + 1, stride 2 (Table 3)
    assert shapes["body/conv2"] == (2, 27, 27, 256)  # pool1 29, pad 1 (Table 3): 29 + 2 - 5 + 1
    assert shapes["body/conv3"] == (2, 13, 13, 384)  # pool2: ceil((27 - 3) / 2) + 1
    assert shapes["body/conv5"] == (2, 13, 13, 256)


# ---------------------------------------------------------------- GoogLeNet


def inception_params(c_in: int, c1: int, r3: int, c3: int, r5: int, c5: int, pool_proj: int) -> int:
    return (
        conv_params(1, c_in, c1)  # 1x1
        + conv_params(1, c_in, r3)  # 3x3_reduce
        + conv_params(3, r3, c3)  # 3x3
        + conv_params(1, c_in, r5)  # 5x5_reduce
        + conv_params(5, r5, c5)  # 5x5
        + conv_params(1, c_in, pool_proj)  # pool_proj
    )


def test_googlenet_parameter_count_matches_hand_count():
    aux = conv_params(1, 512, 128) + dense_params(4 * 4 * 128, NUM_CLASSES)  # loss1: conv + classifier (fc removed)
    aux2 = conv_params(1, 528, 128) + dense_params(4 * 4 * 128, NUM_CLASSES)  # loss2: conv + classifier
    expected = (
        conv_params(7, 3, 64)  # conv1/7x7_s2: 9,472
        + conv_params(1, 64, 64)  # conv2/3x3_reduce: 4,160
        + conv_params(3, 64, 192)  # conv2/3x3: 110,784
        + inception_params(192, 64, 96, 128, 16, 32, 32)  # 3a -> 256 channels: 163,696
        + inception_params(256, 128, 128, 192, 32, 96, 64)  # 3b -> 480: 388,736
        + inception_params(480, 192, 96, 208, 16, 48, 64)  # 4a -> 512: 376,176
        + inception_params(512, 160, 112, 224, 24, 64, 64)  # 4b -> 512: 449,160
        + inception_params(512, 128, 128, 256, 24, 64, 64)  # 4c -> 512: 510,104
        + inception_params(512, 112, 144, 288, 32, 64, 64)  # 4d -> 528: 605,376
        + inception_params(528, 256, 160, 320, 32, 128, 128)  # 4e -> 832: 868,352
        + inception_params(832, 256, 160, 320, 32, 128, 128)  # 5a -> 832: 1,043,456
        + inception_params(832, 384, 192, 384, 48, 128, 128)  # 5b -> 1024: 1,444,080
        + aux  # 65,664 + 102,450
        + aux2  # 67,712 + 102,450
        + dense_params(1024, NUM_CLASSES)  # loss3/classifier = head: 51,250
    )
    assert inception_params(192, 64, 96, 128, 16, 32, 32) == 163_696
    assert expected == 6_363_078
    params = abstract_params(build_model(model_config("googlenet"), NUM_CLASSES))
    assert count(params) == expected
    body = params["params"]["body"]
    # The auxiliary classifiers are shared weights (inside body), never the head.
    assert set(params["params"]) == {"body", "head"}
    assert body["aux1"]["classifier"]["kernel"].shape == (2048, NUM_CLASSES)
    assert body["aux2"]["classifier"]["kernel"].shape == (2048, NUM_CLASSES)
    assert body["inception_3a"]["5x5"]["kernel"].shape == (5, 5, 16, 32)


def test_googlenet_shapes_at_128_train_and_eval():
    model = build_model(model_config("googlenet"), NUM_CLASSES)
    params = abstract_params(model)
    assert jax.eval_shape(model.apply, params, X128).shape == (2, NUM_CLASSES)
    assert jax.eval_shape(lambda p, x: model.apply(p, x, method="features"), params, X128).shape == (2, 1024)

    def train_apply(p, x):
        return model.apply(p, x, train=True, rngs={"dropout": jax.random.key(1)})

    logits, aux = jax.eval_shape(train_apply, params, X128)
    assert logits.shape == (2, NUM_CLASSES)
    assert [float(w.shape == ()) for w, _ in aux] == [1.0, 1.0]  # one scalar weight per auxiliary output
    assert model.aux_loss_weight == 0.3  # Caffe loss1/loss2 loss_weight
    assert [a.shape for _, a in aux] == [(2, NUM_CLASSES)] * 2

    shapes = intermediate_shapes(model)
    assert shapes["body/conv1"] == (2, 122, 122, 64)  # stride 1, pad 0 (Table 3): 128 - 7 + 1
    assert shapes["body/conv2_reduce"] == (2, 61, 61, 64)  # pool1 rounds up: ceil(119 / 2) + 1 (floor: 60)
    assert shapes["body/inception_3a"] == (2, 30, 30, 256)  # pool2: ceil(58 / 2) + 1
    assert shapes["body/inception_4a"] == (2, 15, 15, 512)  # pool3: ceil(27 / 2) + 1 (floor: 14)
    assert shapes["body/aux1/conv"] == (2, 4, 4, 128)  # loss1/ave_pool 6x6/3 (Table 3): (15 - 6) / 3 + 1
    assert shapes["body/aux2/conv"] == (2, 4, 4, 128)
    assert shapes["body/inception_4e"] == (2, 15, 15, 832)
    assert shapes["body/inception_5b"] == (2, 7, 7, 1024)  # pool4: ceil(12 / 2) + 1


def test_googlenet_without_aux_loss_returns_plain_logits():
    model = build_model(model_config("googlenet", aux_loss_weight=0.0), NUM_CLASSES)
    params = abstract_params(model)
    out = jax.eval_shape(lambda p, x: model.apply(p, x, train=True, rngs={"dropout": jax.random.key(1)}), params, X128)
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (2, NUM_CLASSES)


def test_googlenet_forward_is_finite_and_eval_ignores_aux():
    """A real forward at 64x64 (the smallest size CPU experiments use): finite, deterministic in eval."""
    model = GoogLeNet(5)
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    params = numpy_params(model, x.shape)
    apply = jax.jit(model.apply, static_argnames="train")
    logits = apply(params, x)
    assert logits.shape == (2, 5) and bool(jnp.all(jnp.isfinite(logits)))
    # Eval mode does not depend on the auxiliary classifiers' weights.
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "aux1" in jax.tree_util.keystr(path) else v, params
    )
    np.testing.assert_array_equal(np.asarray(apply(zeroed, x)), np.asarray(logits))


# ---------------------------------------------------------------- NiN


def test_nin_parameter_count_matches_hand_count():
    expected = (
        conv_params(11, 3, 96)  # conv1: 34,944
        + 2 * conv_params(1, 96, 96)  # cccp1, cccp2: 2 * 9,312
        + conv_params(5, 96, 256)  # conv2: 614,656
        + 2 * conv_params(1, 256, 256)  # cccp3, cccp4: 2 * 65,792
        + conv_params(3, 256, 384)  # conv3: 885,120
        + 2 * conv_params(1, 384, 384)  # cccp5, cccp6: 2 * 147,840
        + conv_params(3, 384, 1024)  # conv4-1024: 3,539,968
        + conv_params(1, 1024, 1024)  # cccp7-1024: 1,049,600
        + dense_params(1024, NUM_CLASSES)  # cccp8 = head (1x1 conv == dense after the average): 51,250
    )
    assert expected == 6_621_426
    params = abstract_params(build_model(model_config("nin"), NUM_CLASSES))
    assert count(params) == expected


def test_nin_shapes_at_128():
    model = build_model(model_config("nin"), NUM_CLASSES)
    params = abstract_params(model)
    assert jax.eval_shape(model.apply, params, X128).shape == (2, NUM_CLASSES)
    assert jax.eval_shape(lambda p, x: model.apply(p, x, method="features"), params, X128).shape == (2, 1024)
    shapes = intermediate_shapes(model)
    assert shapes["body/conv1"] == (2, 59, 59, 96)
    assert shapes["body/conv2"] == (2, 27, 27, 256)
    assert shapes["body/conv3"] == (2, 13, 13, 384)
    assert shapes["body/cccp7"] == (2, 6, 6, 1024)  # the original's 6x6 map before the global average


@pytest.mark.parametrize("name", ["caffenet", "nin"])
def test_small_input_forward_and_features_feed_head(name):
    """Real compute at 64x64: logits are head(features) exactly (CWR trains the head on cached features)."""
    model = build_model(model_config(name), 7)
    x = jax.random.uniform(jax.random.key(2), (3, 64, 64, 3))
    params = numpy_params(model, x.shape)
    logits = jax.jit(model.apply)(params, x)
    features = jax.jit(lambda p, x: model.apply(p, x, method="features"))(params, x)
    head = params["params"]["head"]
    np.testing.assert_allclose(logits, features @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    assert logits.shape == (3, 7) and bool(jnp.all(jnp.isfinite(logits)))


def test_mlp_dense_init_torch_draws_kernels_and_biases_uniformly_within_one_over_root_fan_in():
    """dense_init='torch' (PyTorch's nn.Linear default, what Avalanche's models start from): every
    kernel and bias of the MLP and its head uniform in ±1/√fan_in (variance bound²/3); 'lecun', the
    default, keeps flax's LeCun normal kernels (variance 1/fan_in) and zero biases."""
    from cljax.config import base_config

    config = base_config()
    config.hidden_sizes = (300, 200)
    x = jnp.zeros((1, 28, 28, 1))
    layers = {"body/fc1": 784, "body/fc2": 300, "head": 200}
    for init in ("lecun", "torch"):
        config.dense_init = init
        params = build_model(config, 10).init(jax.random.key(0), x)["params"]
        for path, fan_in in layers.items():
            layer = params["body"][path.split("/")[1]] if path.startswith("body") else params[path]
            kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
            assert kernel.shape[0] == fan_in
            bound = 1 / math.sqrt(fan_in)
            if init == "lecun":
                np.testing.assert_allclose(kernel.var(), 1 / fan_in, rtol=0.1)
                assert not bias.any()
                continue
            for values in (kernel, bias):
                assert np.abs(values).max() <= bound
                assert values.size < 200 or np.abs(values).max() > 0.9 * bound  # the range is used
            np.testing.assert_allclose(kernel.var(), bound**2 / 3, rtol=0.05)


def test_registry_has_the_paper_models():
    assert {"caffenet", "googlenet", "nin", "cifarnet"} <= set(MODELS)


def test_too_small_input_is_a_clear_error():
    model = build_model(model_config("googlenet"), NUM_CLASSES)
    with pytest.raises(ValueError, match="too small"):
        abstract_params(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


# ---------------------------------------------------------------- Caffe layers


def numpy_lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    out = np.empty_like(x)
    channels = x.shape[-1]
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels, c + size // 2 + 1)
        scale = k + alpha / size * np.sum(x[..., lo:hi] ** 2, axis=-1)
        out[..., c] = x[..., c] * scale**-beta
    return out


def test_lrn_matches_caffe_formula():
    # Large values so that the normalisation is far from the identity.
    x = np.random.default_rng(0).normal(0, 60, (2, 3, 4, 7)).astype(np.float32)
    np.testing.assert_allclose(local_response_norm(jnp.asarray(x)), numpy_lrn(x), rtol=1e-5)
    assert not np.allclose(numpy_lrn(x), x, rtol=1e-2)
    np.testing.assert_allclose(
        local_response_norm(jnp.asarray(x), size=3, alpha=0.5, beta=0.5, k=2.0),
        numpy_lrn(x, 3, 0.5, 0.5, 2.0),
        rtol=1e-5,
    )


def numpy_caffe_pool(x, kind, k, s, p):
    """Caffe's PoolingLayer::Forward_cpu, transcribed loop by loop."""
    b, h, w, c = x.shape
    oh = int(math.ceil((h + 2 * p - k) / s)) + 1
    ow = int(math.ceil((w + 2 * p - k) / s)) + 1
    if p > 0:
        oh -= (oh - 1) * s >= h + p
        ow -= (ow - 1) * s >= w + p
    out = np.zeros((b, oh, ow, c), np.float32)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            pool_size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, hs:he, ws:we, :]
            if kind == "max":
                out[:, i, j] = window.max(axis=(1, 2))
            else:
                out[:, i, j] = window.sum(axis=(1, 2)) / pool_size
    return out


@pytest.mark.parametrize(
    "kind,size,k,s,p",
    [
        ("max", 122, 3, 2, 0),  # GoogLeNet pool1: 61 (rounds up)
        ("max", 30, 3, 2, 0),  # GoogLeNet pool3: 15
        ("max", 9, 3, 1, 1),  # inception pool branch: same size
        ("avg", 15, 6, 3, 0),  # loss1/ave_pool at 128x128: exact 4x4
        ("avg", 11, 6, 3, 0),  # a window hanging over the edge: divisor counts cells inside only
        ("avg", 8, 3, 2, 1),  # explicit padding counts in the divisor
        ("max", 8, 3, 3, 1),  # Caffe drops a last window starting in the padding
    ],
)
def test_caffe_pool_matches_caffe_loops(kind, size, k, s, p):
    x = np.random.default_rng(size).normal(size=(2, size, size + 1, 3)).astype(np.float32)
    expected = numpy_caffe_pool(x, kind, k, s, p)
    got = np.asarray(caffe_pool(jnp.asarray(x), kind, k, s, p))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_caffe_output_size_rounds_up():
    assert caffe_output_size(122, 3, 2, 0) == 61
    assert caffe_output_size(30, 3, 2, 0) == 15
    assert caffe_output_size(59, 3, 2, 0) == 29
    with pytest.raises(ValueError, match="too small"):
        caffe_output_size(3, 6, 3, 0)


def test_grouped_conv_equals_flax_grouped_conv():
    """Same params, same outputs as nn.Conv(feature_group_count=2) (Caffe group=2)."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
    grouped = GroupedConv(8, 3, groups=2, padding=1)
    params = grouped.init(jax.random.key(1), x)
    assert params["params"]["kernel"].shape == (3, 3, 3, 8)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    reference = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=2)
    with jax.default_matmul_precision("float32"):
        np.testing.assert_allclose(grouped.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)
