"""Running a model below and above a named layer, for latent replay (AR1*, Pellegrini et al. 2020).

Any Flax model of ``cljax.models`` is split at one of its layers (a submodule, named by its path
under ``params['params']``, e.g. ``body/fc1``, ``body/conv5``, ``body/inception_4b``) without
per-model code, with ``flax.linen.intercept_methods``:

- ``latents(apply_fn, params, x, split)``: the layer's output ("below"). The layers above it are
  computed by nothing: the program returns the intercepted value only, so XLA drops them;
- ``replaying(split, latents)``: a context in which ``apply_fn(params, x, ...)`` runs ``x`` through
  the whole model and ``latents`` through the layers above the split only: at the layer, its
  output for ``x`` is followed by ``latents`` (the rows of the result are ``x``'s, then the
  replayed ones). The replayed rows never pay for the layers below, as in the authors' forward
  (``torch.cat((orig_acts, latent_input), 0)`` in their MobileNet).

``split_model`` finds which parameters lie below the layer (``lower_mask``): those of the modules
whose call ends before the layer's does, the layer's own included, in the order the model runs
them (GoogLeNet's first auxiliary classifier hangs below ``inception_4b``: it is below). Each
split is checked once on shapes (``jax.eval_shape``): the layer must be called once, return one
array and feed the main logits; otherwise a ``ConfigError`` lists the valid names.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.hparams import ConfigError

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LatentSplit:
    """Where a model is split: the layer, what lies below it, and one example's latent shape."""

    layer: Path
    lower: frozenset[Path]  # module paths computed below the layer (its own and its submodules' included)
    shape: tuple[int, ...]  # one example's latent activations
    name: str = ""  # its path, "/"-joined

    def is_lower(self, module_path: Path) -> bool:
        return tuple(module_path) in self.lower


def _name(path: Path) -> str:
    return "/".join(path)


def module_calls(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[Path, tuple[int, ...] | None]]:
    """Every ``__call__`` of a submodule while the model initialises, in the order the calls end:
    (path, output shape; None when the output is not one array), on shapes only (nothing is computed)."""
    calls = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            calls.append((tuple(context.module.path), tuple(out.shape) if isinstance(out, jax.Array) else None))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *input_shape), jnp.float32)))
    return calls


def _init_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *input_shape), jnp.float32)))


def _has_params(path: Path, params: Any) -> bool:
    node = params.get("params", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return isinstance(node, dict) and bool(node)


def _candidates(model: nn.Module, input_shape: tuple[int, ...], classifier: str) -> list[LatentSplit]:
    """Submodules with parameters that run once and return one array (the classifier excluded)."""
    params = _init_shapes(model, input_shape)
    head = tuple(k for k in classifier.split("/") if k)
    calls = module_calls(model, input_shape)
    found = []
    for end, (path, shape) in enumerate(calls):
        runs = sum(p == path for p, _ in calls)
        if runs == 1 and shape is not None and path[: len(head)] != head and _has_params(path, params):
            found.append(LatentSplit(path, frozenset(p for p, _ in calls[: end + 1]), shape[1:], _name(path)))
    return found


def _feeds_logits(model: nn.Module, input_shape: tuple[int, ...], split: LatentSplit, params: Any) -> bool:
    """Whether latents injected at the layer come out as rows of the logits (shapes only): not a
    side branch (GoogLeNet's aux1) nor one branch of a block whose branches are joined (an
    inception's 1x1)."""
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    probe = jnp.zeros((3, *split.shape), jnp.float32)

    def logits(params, x):
        with replaying(split, probe):
            return model.apply(params, x, train=False)

    try:
        return jax.eval_shape(logits, params, x).shape[0] == 5
    except Exception:  # the replayed rows meet rows of another branch: a shape error
        return False


def layer_names(model: nn.Module, input_shape: tuple[int, ...], classifier: str = "head") -> list[str]:
    """Every layer a model can be split at, in the order the model runs them.

    A block's inner layers are looked at only when the block is a valid split and its last inner
    layer is too (a chain: an MLP body); an inception block joins branches, so none of its inner
    layers is, nor is a side branch's (this keeps the shape checks few)."""
    params = _init_shapes(model, input_shape)
    candidates = _candidates(model, input_shape, classifier)
    by_path = {s.layer: s for s in candidates}
    valid: dict[Path, bool] = {}

    def check(split: LatentSplit) -> bool:
        if split.layer not in valid:
            valid[split.layer] = _feeds_logits(model, input_shape, split, params)
        return valid[split.layer]

    for split in sorted(candidates, key=lambda s: len(s.layer)):
        parents = [split.layer[:k] for k in range(len(split.layer) - 1, 0, -1) if split.layer[:k] in by_path]
        if parents:
            parent = by_path[parents[0]]
            inner = [s for s in candidates if s.layer[: len(parent.layer)] == parent.layer and s != parent]
            last = max(inner, key=lambda s: len(s.lower))
            if not (valid[parent.layer] and check(last)):
                valid[split.layer] = False
                continue
        check(split)
    return [s.name for s in candidates if valid[s.layer]]


def split_model(
    model: nn.Module, input_shape: tuple[int, ...], layer: str, classifier: str = "head", field: str = "latent_layer"
) -> LatentSplit:
    """The split of ``model`` at ``layer`` (its path, e.g. ``body/conv5``, or the last part of
    exactly one path, ``conv5``); a ``ConfigError`` listing the valid layers otherwise."""
    candidates = _candidates(model, input_shape, classifier)
    wanted = layer.strip("/")
    matches = [s for s in candidates if s.name == wanted] or [s for s in candidates if s.name.endswith("/" + wanted)]
    if len(matches) == 1 and _feeds_logits(model, input_shape, matches[0], _init_shapes(model, input_shape)):
        return matches[0]
    allowed = ", ".join(layer_names(model, input_shape, classifier))
    raise ConfigError(
        f"{field}={layer!r} is not a layer of model {type(model).__name__} to split at; allowed: {allowed}"
    )


def lower_mask(split: LatentSplit) -> Callable[[Any], Any]:
    """A mask function (``optax.masked``): True at the parameters below the layer (its own included)."""

    def mask(params):
        def below(tree_path, _leaf) -> bool:
            keys = tuple(k.key for k in tree_path if isinstance(k, jax.tree_util.DictKey))
            module = keys[1:-1] if keys and keys[0] == "params" else keys[:-1]
            return split.is_lower(module)

        return jax.tree_util.tree_map_with_path(below, params)

    return mask


def latents(apply_fn: Callable[..., Any], params: Any, x: jax.Array, split: LatentSplit) -> jax.Array:
    """The layer's output for ``x`` in inference mode (float32); the layers above it are not run."""
    captured = []

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == split.layer:
            captured.append(out)
        return out

    with nn.intercept_methods(capture):
        apply_fn(params, x, train=False)  # its logits are unused: XLA removes the layers above
    return captured[0].astype(jnp.float32)


@contextlib.contextmanager
def replaying(split: LatentSplit, replayed: jax.Array, lower_dropout: bool = True) -> Iterator[None]:
    """Within this context the model runs its input through every layer and ``replayed`` (latent
    activations [R, *split.shape]) through the layers above the split, appended after the input's
    rows. ``lower_dropout=False``: dropout below the layer is off (the authors run the lower part
    in inference mode, ``lat_features.eval()``, so new patterns see what the stored latents saw).

    A model with auxiliary classifiers below the layer (GoogLeNet's aux1 under ``inception_4b``)
    returns their logits for the input rows only; they are padded to every row with zero weight on
    the replayed ones (their loss is the input rows' alone)."""

    def intercept(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if not lower_dropout and isinstance(context.module, nn.Dropout) and split.is_lower(path):
            return args[0]  # dropout in inference mode is the identity
        out = next_fun(*args, **kwargs)
        if path == split.layer:
            return jnp.concatenate([out, replayed.astype(out.dtype)])
        if not path and isinstance(out, tuple):  # the model's training output: (logits, ((w, aux), ...))
            logits, aux = out
            return logits, tuple(_pad_aux(w, a, logits.shape[0]) for w, a in aux)
        return out

    with nn.intercept_methods(intercept):
        yield


def _pad_aux(weight: Any, aux_logits: jax.Array, rows: int) -> tuple[Any, jax.Array]:
    """Auxiliary logits computed below the split (input rows only) padded to ``rows``, weighted 0 there."""
    n = aux_logits.shape[0]
    if n == rows:
        return weight, aux_logits
    padded = jnp.concatenate([aux_logits, jnp.zeros((rows - n, *aux_logits.shape[1:]), aux_logits.dtype)])
    return weight * (jnp.arange(rows) < n).astype(jnp.float32), padded
