"""Initial weights from an orbax checkpoint (config field ``init_checkpoint``).

The paper starts every CORe50 model from ImageNet weights (Table 2) and
CifarNet from CIFAR-10 weights (sec. 4.3). ``save_params`` writes a params
pytree (``{'params': {'body': ..., 'head': ...}}``) as an orbax
StandardCheckpointer directory; scripts/pretrain.py and
``python -m cljax.models.import_torch`` produce one. ``restore_params``
reads it back; ``merge_pretrained`` puts it into a freshly initialised tree.

Matching rule: every path of the model must be in the checkpoint with the
same shape, and the checkpoint must hold no other path; otherwise a
``ConfigError`` names the first mismatching path. The exception is an
output layer (``head`` and GoogLeNet's auxiliary ``classifier``s) whose
shape differs (CIFAR-10's 10 classes against iCIFAR-100's 100, ImageNet's
1000 against CORe50's 50): it keeps its fresh random initialisation, as a
new classifier layer would in Caffe fine-tuning. With config ``init_head='fresh'``
the output layers keep their fresh initialisation whatever their shape (the
pre-trained protocol, where the slice's classifier has the stream's 10
outputs). Leaves take the dtype of the fresh tree.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cljax.config import ConfigError

Params = Any
# Layer names whose kernel/bias are re-initialised when their shape differs from the checkpoint's.
OUTPUT_LAYERS = ("head", "classifier")


def save_params(directory: str, params: Params) -> None:
    """Writes ``params`` to ``directory`` (a new orbax checkpoint; the directory must not exist)."""
    directory = os.path.abspath(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, jax.tree.map(np.asarray, params))


def restore_params(directory: str) -> Params:
    """Reads a params checkpoint onto the default device, whatever device wrote it."""
    directory = os.path.abspath(directory)
    problem = "it holds no checkpoint metadata"
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(directory)
            if metadata is not None and metadata.item_metadata is not None:
                device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
                target = jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                    metadata.item_metadata.tree,
                )
                return checkpointer.restore(directory, target)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        problem = f"{type(e).__name__}: {e}"
    raise ConfigError(f"init_checkpoint={directory!r} is not a readable orbax params checkpoint ({problem})")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def is_output_layer(name: str, classifier: str = "head") -> bool:
    """Whether parameter path ``name`` belongs to an output layer: the classifier (its path under
    ``params``) or one of ``OUTPUT_LAYERS`` (GoogLeNet's auxiliary classifiers)."""
    if any(part in OUTPUT_LAYERS for part in name.split("/")[:-1]):
        return True
    return name.startswith(f"params/{classifier.strip('/')}/")


def merge_pretrained(
    fresh: Params,
    pretrained: Params,
    source: str = "init_checkpoint",
    fresh_head: bool = False,
    classifier: str = "head",
) -> Params:
    """``fresh`` with every leaf replaced by the checkpoint's (see the module doc for the rule); with
    ``fresh_head`` (config ``init_head='fresh'``) the output layers keep their fresh initialisation
    whatever their shape, as the paper replaces the pre-trained classifier."""
    fresh_leaves = {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(fresh)[0]}
    saved_leaves = {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(pretrained)[0]}
    reinitialised = set()
    for name in sorted(set(fresh_leaves) | set(saved_leaves)):  # the first mismatching path is reported
        if name not in saved_leaves:
            raise ConfigError(f"{source}: the model's parameter {name!r} is missing from the checkpoint")
        if name not in fresh_leaves:
            raise ConfigError(f"{source}: the checkpoint's parameter {name!r} is not in the model")
        old, new = saved_leaves[name], fresh_leaves[name]
        if fresh_head and is_output_layer(name, classifier):
            reinitialised.add(name)
        elif tuple(old.shape) != tuple(new.shape):
            if not is_output_layer(name, classifier):
                raise ConfigError(
                    f"{source}: parameter {name!r} has shape {tuple(old.shape)} in the checkpoint "
                    f"but {tuple(new.shape)} in the model"
                )
            reinitialised.add(name)  # a classifier sized for other classes: keep the fresh initialisation

    def pick(path, new):
        name = _path_str(path)
        return new if name in reinitialised else jnp.asarray(saved_leaves[name], dtype=new.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh)
