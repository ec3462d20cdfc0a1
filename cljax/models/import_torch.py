"""Imports a torchvision GoogLeNet state_dict (.pth) into ``cljax.models.GoogLeNet``'s params.

The paper initialises GoogLeNet from ImageNet weights (Table 2). Caffe's
``bvlc_googlenet`` is hard to obtain today; torchvision's ImageNet GoogLeNet
(``googlenet-1378be20.pth``, the user downloads it) is the practical source.
It differs from Caffe's network in three ways, handled here exactly:

- Batch normalisation: each torchvision ``BasicConv2d`` is conv (no bias) +
  BatchNorm (eps 0.001) + ReLU. In inference mode BN is an affine map per
  channel, folded into the convolution: kernel·γ/√(var+ε) and bias
  β − mean·γ/√(var+ε). The Flax GoogLeNet has no BN layers (as Caffe's), so
  the imported network computes what torchvision's eval-mode network
  computes, and later training updates the folded weights (BN statistics no
  longer adapt; the paper's Caffe GoogLeNet has none either).
- The "5x5" branch of torchvision's inception blocks uses 3x3 kernels
  (torchvision issue 906); a 3x3 kernel with pad 1 equals a 5x5 kernel with
  pad 2 whose outer ring is zero, so it is embedded in the 5x5 kernel.
- No LRN: run the imported weights with ``--config.lrn=False``.

Input scaling: torchvision's weights expect (x − 0.5)/0.5 for RGB x in
[0, 1] (its ``transform_input``). cljax datasets hold x in [0, 1], so by
default that affine map is folded into conv1 (exact: the paper's conv1 has
no padding). Pass ``input_mean=None`` to skip it.

Not imported, kept from the fresh initialisation: the auxiliary
classifiers' fc1/fc2 (the paper removes loss1/fc and loss2/fc and resizes
the classifiers, Table 3) and ``fc`` when its class count differs from the
model's (ImageNet's 1000 against CORe50's 50). The paper's 128x128 changes
(conv1 stride 1/pad 0, 6x6 auxiliary pooling, Caffe's 3x3 pool4) change no
weight shape. Everything else must match, or a ValueError names the key.

Command line (saves an orbax checkpoint for ``--config.init_checkpoint``):

    python -m cljax.models.import_torch --pth=googlenet-1378be20.pth --out=runs/googlenet_imagenet --num_classes=50
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cljax.models.googlenet import INCEPTION

Params = Any
BN_EPS = 1e-3  # torchvision BasicConv2d's BatchNorm2d(eps=0.001)
# torchvision Inception submodule -> Flax Inception submodule.
BRANCHES = {
    "branch1": "1x1",
    "branch2.0": "3x3_reduce",
    "branch2.1": "3x3",
    "branch3.0": "5x5_reduce",
    "branch3.1": "5x5",
    "branch4.1": "pool_proj",
}


def conv_mapping() -> dict[str, tuple[str, ...]]:
    """torchvision BasicConv2d prefix -> Flax module path inside params['params']."""
    mapping = {
        "conv1": ("body", "conv1"),
        "conv2": ("body", "conv2_reduce"),  # Caffe conv2/3x3_reduce
        "conv3": ("body", "conv2"),  # Caffe conv2/3x3
        "aux1.conv": ("body", "aux1", "conv"),
        "aux2.conv": ("body", "aux2", "conv"),
    }
    for name in INCEPTION:
        for torch_branch, flax_branch in BRANCHES.items():
            mapping[f"inception{name}.{torch_branch}"] = ("body", f"inception_{name}", flax_branch)
    return mapping


def fold_batch_norm(weight_OIHW: np.ndarray, bn: Mapping[str, np.ndarray], eps: float = BN_EPS):
    """Conv (no bias) followed by eval-mode BN -> one conv: (kernel [H, W, I, O], bias [O])."""
    scale = bn["weight"] / np.sqrt(bn["running_var"] + eps)
    kernel = np.transpose(weight_OIHW, (2, 3, 1, 0)) * scale
    bias = bn["bias"] - bn["running_mean"] * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


def embed_kernel(kernel_HWIO: np.ndarray, size: int, key: str) -> np.ndarray:
    """A k x k kernel centred in a size x size one (same output with pad (size-1)/2 instead of (k-1)/2)."""
    k = kernel_HWIO.shape[0]
    if k == size:
        return kernel_HWIO
    if k > size or (size - k) % 2:
        raise ValueError(f"{key}: a {k}x{k} kernel does not fit the model's {size}x{size} kernel")
    p = (size - k) // 2
    return np.pad(kernel_HWIO, ((p, p), (p, p), (0, 0), (0, 0)))


def fold_input_normalization(kernel_HWIO, bias, mean: Sequence[float], std: Sequence[float]):
    """conv((x − mean)/std) as conv'(x), exact for an unpadded convolution."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    kernel = kernel_HWIO / std[None, None, :, None]
    bias = bias - np.einsum("hwio,i->o", kernel, mean)
    return kernel.astype(np.float32), bias.astype(np.float32)


def import_googlenet(
    state_dict: Mapping[str, Any],
    params: Params,
    input_mean: Sequence[float] | None = (0.5, 0.5, 0.5),
    input_std: Sequence[float] = (0.5, 0.5, 0.5),
) -> tuple[Params, list[str]]:
    """``params`` (a fresh GoogLeNet tree) with every torchvision weight that fits put in.

    Returns the new params (NumPy leaves) and the state_dict keys left out
    (auxiliary fc1/fc2, a head of another class count, BN step counters).
    """
    sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    skipped = sorted(k for k in state_dict if k.endswith("num_batches_tracked"))
    out = _copy_tree(params)
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in sd:
            raise ValueError(f"state_dict has no {key!r}: is it a torchvision GoogLeNet state_dict?")
        used.add(key)
        return sd[key]

    for prefix, path in conv_mapping().items():
        if prefix.startswith("aux") and f"{prefix}.conv.weight" not in sd:
            continue  # saved without auxiliary classifiers (aux_logits=False): theirs stay fresh
        bn = {field: take(f"{prefix}.bn.{field}") for field in ("weight", "bias", "running_mean", "running_var")}
        kernel, bias = fold_batch_norm(take(f"{prefix}.conv.weight"), bn)
        target = _node(out, path, prefix)
        kernel = embed_kernel(kernel, target["kernel"].shape[0], f"{prefix}.conv.weight")
        if prefix == "conv1" and input_mean is not None:
            kernel, bias = fold_input_normalization(kernel, bias, input_mean, input_std)
        _assign(target, "kernel", kernel, f"{prefix}.conv.weight")
        _assign(target, "bias", bias, f"{prefix}.bn.bias")

    head = _node(out, ("head",), "fc")
    fc_weight, fc_bias = take("fc.weight"), take("fc.bias")
    if fc_weight.T.shape == tuple(head["kernel"].shape):
        _assign(head, "kernel", fc_weight.T, "fc.weight")
        _assign(head, "bias", fc_bias, "fc.bias")
    else:
        skipped += ["fc.weight", "fc.bias"]
    for aux in ("aux1", "aux2"):
        for layer in ("fc1", "fc2"):
            for field in ("weight", "bias"):
                key = f"{aux}.{layer}.{field}"
                if key in sd:
                    used.add(key)
                    skipped.append(key)
    unknown = sorted(set(sd) - used)
    if unknown:
        raise ValueError(f"state_dict key {unknown[0]!r} has no place in the GoogLeNet ({len(unknown)} such keys)")
    return out, skipped


def _copy_tree(tree):
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def _node(params, path: tuple[str, ...], key: str) -> dict:
    node = params["params"]
    for part in path:
        if part not in node:
            raise ValueError(f"{key}: the model has no {'/'.join(path)!r}; is it a cljax GoogLeNet?")
        node = node[part]
    return node


def _assign(node: dict, field: str, value: np.ndarray, key: str) -> None:
    if tuple(node[field].shape) != value.shape:
        raise ValueError(f"{key}: shape {value.shape} does not fit the model's {tuple(node[field].shape)}")
    node[field] = value.astype(node[field].dtype)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a .pth state_dict with torch (only the reader needs torch)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading a .pth file needs PyTorch: pip install torch") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return {k: v.detach().float().numpy() for k, v in state.items()}


def main(argv: Sequence[str]) -> None:
    import jax
    import jax.numpy as jnp
    from absl import flags

    from cljax.models.googlenet import GoogLeNet
    from cljax.models.pretrained import save_params

    del argv
    f = flags.FLAGS
    model = GoogLeNet(f.num_classes, lrn=False)
    x = jnp.zeros((1, f.image_size, f.image_size, 3), jnp.float32)
    fresh = jax.jit(model.init)(jax.random.key(f.seed), x)
    mean = None if f.raw_input else (0.5, 0.5, 0.5)
    params, skipped = import_googlenet(load_state_dict(f.pth), fresh, input_mean=mean)
    save_params(f.out, params)
    print(f"saved {f.out}; left at their fresh initialisation: {', '.join(skipped) or 'nothing'}")
    print(f"use: --config.model=googlenet --config.lrn=False --config.init_checkpoint={f.out}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("pth", None, "torchvision GoogLeNet state_dict (.pth).", required=True)
    flags.DEFINE_string("out", None, "New orbax checkpoint directory to write.", required=True)
    flags.DEFINE_integer("num_classes", 50, "Classes of the target scenario (CORe50: 50).")
    flags.DEFINE_integer("image_size", 128, "Input size the params are built for (the paper's: 128).")
    flags.DEFINE_integer("seed", 0, "Seed of the fresh initialisation of the layers not imported.")
    flags.DEFINE_bool("raw_input", False, "Do not fold torchvision's (x - 0.5) / 0.5 input scaling into conv1.")
    app.run(main)
