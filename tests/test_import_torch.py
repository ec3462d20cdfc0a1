"""torchvision GoogLeNet state_dict -> Flax GoogLeNet: equal outputs on random weights, nothing downloaded.

The reference forward pass is written here with torch.nn.functional on the
state_dict itself, module by module under torchvision's names (BasicConv2d =
conv + eval-mode BatchNorm(eps=1e-3) + ReLU; the "5x5" branch with 3x3
kernels; input scaled by (x - 0.5) / 0.5), wired as the paper's 128x128
GoogLeNet (conv1 stride 1 pad 0, Caffe's 3x3/2 pool4, 6x6/3 auxiliary
pooling, no LRN). It needs PyTorch (CPU build): skipped, with its reason, where torch is not installed; failed in CI.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# PyTorch is an optional dependency (the `torch` extra); .ci/run installs its CPU build, and in
# CI (CI=true) a missing torch fails this module instead of skipping it.
if os.environ.get("CI", "").lower() == "true":
    import torch
else:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
import torch.nn.functional as F  # noqa: E402

from cljax.models.googlenet import INCEPTION, GoogLeNet
from cljax.models.import_torch import fold_batch_norm, import_googlenet, load_state_dict

IN_CHANNELS = {"3a": 192, "3b": 256, "4a": 480, "4b": 512, "4c": 512, "4d": 512, "4e": 528, "5a": 832, "5b": 832}


def random_state_dict(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of torchvision's GoogLeNet(aux_logits=True), random values that keep activations O(1)."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def basic(prefix, c_in, c_out, k):
        sd[f"{prefix}.conv.weight"] = rng.normal(0, math.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k))
        sd[f"{prefix}.bn.weight"] = rng.uniform(0.5, 1.5, c_out)
        sd[f"{prefix}.bn.bias"] = rng.normal(0, 0.1, c_out)
        sd[f"{prefix}.bn.running_mean"] = rng.normal(0, 0.1, c_out)
        sd[f"{prefix}.bn.running_var"] = rng.uniform(0.5, 2.0, c_out)
        sd[f"{prefix}.bn.num_batches_tracked"] = np.array(7)

    basic("conv1", 3, 64, 7)
    basic("conv2", 64, 64, 1)
    basic("conv3", 64, 192, 3)
    for name, (c1, r3, c3, r5, c5, pool_proj) in INCEPTION.items():
        c_in, p = IN_CHANNELS[name], f"inception{name}"
        basic(f"{p}.branch1", c_in, c1, 1)
        basic(f"{p}.branch2.0", c_in, r3, 1)
        basic(f"{p}.branch2.1", r3, c3, 3)
        basic(f"{p}.branch3.0", c_in, r5, 1)
        basic(f"{p}.branch3.1", r5, c5, 3)  # torchvision's 3x3 "5x5" branch
        basic(f"{p}.branch4.1", c_in, pool_proj, 1)
    for aux, c_in in (("aux1", 512), ("aux2", 528)):
        basic(f"{aux}.conv", c_in, 128, 1)
        sd[f"{aux}.fc1.weight"] = rng.normal(0, 0.02, (1024, 2048))
        sd[f"{aux}.fc1.bias"] = np.zeros(1024)
        sd[f"{aux}.fc2.weight"] = rng.normal(0, 0.02, (num_classes, 1024))
        sd[f"{aux}.fc2.bias"] = np.zeros(num_classes)
    sd["fc.weight"] = rng.normal(0, 1 / 32, (num_classes, 1024))
    sd["fc.bias"] = rng.normal(0, 0.1, num_classes)
    return {k: torch.tensor(v, dtype=torch.int64 if k.endswith("tracked") else torch.float32) for k, v in sd.items()}


def torch_reference(sd, x_NCHW, aux_classifiers):
    """The paper's GoogLeNet with torchvision's modules; aux_classifiers: [(kernel [2048, C] in NHWC order, bias)]."""

    def basic(h, prefix, padding=0):
        h = F.conv2d(h, sd[f"{prefix}.conv.weight"], padding=padding)
        h = F.batch_norm(
            h,
            sd[f"{prefix}.bn.running_mean"],
            sd[f"{prefix}.bn.running_var"],
            sd[f"{prefix}.bn.weight"],
            sd[f"{prefix}.bn.bias"],
            training=False,
            eps=1e-3,
        )
        return F.relu(h)

    def inception(h, p):
        b1 = basic(h, f"{p}.branch1")
        b2 = basic(basic(h, f"{p}.branch2.0"), f"{p}.branch2.1", padding=1)
        b3 = basic(basic(h, f"{p}.branch3.0"), f"{p}.branch3.1", padding=1)
        b4 = basic(F.max_pool2d(h, 3, 1, 1, ceil_mode=True), f"{p}.branch4.1")
        return torch.cat([b1, b2, b3, b4], 1)

    def aux(h, prefix, classifier):
        h = basic(F.avg_pool2d(h, 6, 3, ceil_mode=True), f"{prefix}.conv")
        kernel, bias = classifier
        return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1) @ kernel + bias

    h = (x_NCHW - 0.5) / 0.5  # torchvision's transform_input applied to ImageNet-normalised input
    h = basic(h, "conv1")  # paper: stride 1, pad 0
    h = F.max_pool2d(h, 3, 2, ceil_mode=True)
    h = basic(basic(h, "conv2"), "conv3", padding=1)
    h = F.max_pool2d(h, 3, 2, ceil_mode=True)
    aux_logits = []
    for name in INCEPTION:
        if name in ("4a", "5a"):
            h = F.max_pool2d(h, 3, 2, ceil_mode=True)
        h = inception(h, f"inception{name}")
        if name in ("4a", "4d"):
            index = len(aux_logits)
            aux_logits.append(aux(h, f"aux{index + 1}", aux_classifiers[index]))
    features = h.mean(dim=(2, 3))
    return features @ sd["fc.weight"].T + sd["fc.bias"], aux_logits


def fresh_params(model, x_shape, seed=1):
    """Fresh params drawn with NumPy (Flax's init would compile a sampler per shape: slow on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x_shape, jnp.float32))
    return jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)


def test_imported_googlenet_matches_torch_reference(tmp_path):
    num_classes = 10
    model = GoogLeNet(num_classes, lrn=False, dropout=0.0, aux_dropout=0.0)
    x = np.random.default_rng(3).uniform(0, 1, (2, 128, 128, 3)).astype(np.float32)
    sd = random_state_dict(num_classes)
    path = tmp_path / "googlenet.pth"
    torch.save(sd, path)

    params, skipped = import_googlenet(load_state_dict(str(path)), fresh_params(model, x.shape))
    assert skipped == sorted(k for k in sd if k.endswith("num_batches_tracked")) + [
        f"{a}.{layer}.{f}" for a in ("aux1", "aux2") for layer in ("fc1", "fc2") for f in ("weight", "bias")
    ]
    body = params["params"]["body"]
    # The 3x3 kernels sit inside 5x5 kernels with a zero ring.
    ring = body["inception_4a"]["5x5"]["kernel"].copy()
    ring[1:4, 1:4] = 0
    assert not ring.any() and body["inception_4a"]["5x5"]["kernel"].shape == (5, 5, 16, 48)

    apply = jax.jit(lambda p, x: model.apply(p, x, train=True, rngs={"dropout": jax.random.key(0)}))
    with jax.default_matmul_precision("float32"):  # full precision on GPUs too (no TF32)
        logits, aux = apply(params, jnp.asarray(x))
    aux_classifiers = [
        (
            torch.tensor(np.asarray(body[a]["classifier"]["kernel"])),
            torch.tensor(np.asarray(body[a]["classifier"]["bias"])),
        )
        for a in ("aux1", "aux2")
    ]
    with torch.no_grad():
        ref_logits, ref_aux = torch_reference(sd, torch.tensor(x).permute(0, 3, 1, 2), aux_classifiers)
    for got, ref in [(logits, ref_logits), (aux[0][1], ref_aux[0]), (aux[1][1], ref_aux[1])]:
        ref = ref.numpy()
        assert np.abs(ref).max() > 0.1  # the comparison is not between two near-zero outputs
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_head_of_another_class_count_keeps_fresh_init():
    model = GoogLeNet(7, lrn=False)
    fresh = fresh_params(model, (1, 128, 128, 3))
    sd = {k: v.numpy() for k, v in random_state_dict(1000, seed=5).items()}
    params, skipped = import_googlenet(sd, fresh, input_mean=None)
    assert "fc.weight" in skipped and "fc.bias" in skipped
    np.testing.assert_array_equal(params["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    # Without input folding conv1 is exactly the BN-folded torchvision conv1.
    bn = {f: sd[f"conv1.bn.{f}"] for f in ("weight", "bias", "running_mean", "running_var")}
    kernel, bias = fold_batch_norm(sd["conv1.conv.weight"], bn)
    np.testing.assert_array_equal(params["params"]["body"]["conv1"]["kernel"], kernel)
    np.testing.assert_array_equal(params["params"]["body"]["conv1"]["bias"], bias)


def test_fold_batch_norm_against_formula():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    bn = {
        "weight": rng.uniform(0.5, 2, 4),
        "bias": rng.normal(size=4),
        "running_mean": rng.normal(size=4),
        "running_var": rng.uniform(0.5, 2, 4),
    }
    x = rng.normal(size=3).astype(np.float32)
    conv_then_bn = (w[:, :, 0, 0] @ x - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn[
        "bias"
    ]
    kernel, bias = fold_batch_norm(w, bn)
    np.testing.assert_allclose(x @ kernel[0, 0] + bias, conv_then_bn, rtol=1e-5)


def test_state_dict_errors_name_the_key():
    model = GoogLeNet(10, lrn=False)
    fresh = fresh_params(model, (1, 128, 128, 3))
    sd = {k: v.numpy() for k, v in random_state_dict(10).items()}
    missing = dict(sd)
    del missing["inception3b.branch2.1.bn.running_var"]
    with pytest.raises(ValueError, match="inception3b.branch2.1.bn.running_var"):
        import_googlenet(missing, fresh)
    extra = dict(sd, **{"layer5.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="layer5.weight"):
        import_googlenet(extra, fresh)
    wrong = dict(sd, **{"conv3.conv.weight": np.zeros((192, 64, 5, 5), np.float32)})
    with pytest.raises(ValueError, match="conv3.conv.weight"):
        import_googlenet(wrong, fresh)
