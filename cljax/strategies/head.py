"""The consolidated head shared by CWR, CWR+ and AR1 (paper section 3, Algorithms 1-3).

The classifier layer (``params['params'][path]``, ``path`` = ``"head"`` unless the model names it
otherwise: ``config.classifier``; ``"a/b"`` for a nested layer) holds ``{'kernel': [D, C], 'bias': [C]}``;
class j's weights are ``kernel[:, j]`` (and ``bias[j]``). During training the model's head is the *temporary* head tw;
the strategy state keeps the *consolidated* head cw (zeros before B_1, Alg. 1-3 line 1) and, per
class, the number of training examples consolidated so far. Evaluation uses Θ̄ with cw.

Everything here is a pure, jit-compiled function that keeps every leaf's shape and dtype, and
which classes a batch holds is data (a count vector), never a Python value: one compilation
serves every batch of every run.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import transforms
from cljax.models import HEAD

Params = Any


class HeadState(NamedTuple):
    """Consolidated head cw and the training examples per class it was consolidated from."""

    cw: Params  # {'kernel': [D, C], 'bias': [C]}, zeros before B_1
    past_counts: jax.Array  # [C] float32: examples of class j in the batches consolidated so far


def head_of(params: Params, path: str = HEAD) -> Params:
    """The classifier layer's parameters ``{'kernel', 'bias'}`` (at ``path`` under ``params['params']``)."""
    node = params["params"]
    for key in transforms.path_keys(path):
        node = node[key]
    return node


def with_head(params: Params, head: Params, path: str = HEAD) -> Params:
    """``params`` with the classifier layer at ``path`` replaced by ``head`` (a new tree; Θ̄ leaves shared)."""

    def replace(node: Params, keys: tuple[str, ...]) -> Params:
        return head if not keys else {**node, keys[0]: replace(node[keys[0]], keys[1:])}

    return {**params, "params": replace(params["params"], transforms.path_keys(path))}


def init_head_state(params: Params, path: str = HEAD) -> HeadState:
    """cw = 0 (Alg. 1-3, line 1), no class consolidated yet."""
    head = head_of(params, path)
    return HeadState(
        cw=jax.tree.map(jnp.zeros_like, head),
        past_counts=jnp.zeros(head["bias"].shape, jnp.float32),
    )


def head_bias_mask(path: str = HEAD):
    """Mask (``optax.masked``) that is True only at the classifier's bias; works on full or head-only trees."""
    name = transforms.path_keys(path)[-1]

    def select(tree_path, _leaf) -> bool:
        keys = [k.key for k in tree_path if isinstance(k, jax.tree_util.DictKey)]
        return keys[-2:] == [name, "bias"]

    return lambda params: jax.tree_util.tree_map_with_path(select, params)


is_head_bias = head_bias_mask(HEAD)


def freeze_head_bias(tx: optax.GradientTransformation, path: str = HEAD) -> optax.GradientTransformation:
    """``tx`` whose updates to the head bias are zero (learning rate 0 on it, as in the authors' code).

    Mean-shift (CWR+, AR1) normalises the class weights only; a trained bias would carry the
    per-batch offsets that the mean-shift cannot remove, and cw's bias (zero) could not hold them.
    """
    return optax.chain(tx, optax.masked(optax.set_to_zero(), head_bias_mask(path)))


@jax.jit
def consolidate(state: HeadState, new: Params, counts_C: jax.Array) -> HeadState:
    """Writes the batch's class weights ``new`` into cw (Alg. 1 line 10, Alg. 2 line 10).

    Only classes present in the batch (``counts_C[j] > 0``) change; every other column of cw
    stays exactly as it was (never-seen classes stay exactly zero). A class consolidated in an
    earlier batch (NI/NIC content) keeps its past weights through the authors' weighted update
    (CWR*/AR1* code): cw[j] = (cw[j]·w_past + new_j) / (w_past + 1), w_past = sqrt(past_j / cur_j).
    """
    present = counts_C > 0
    seen_before = state.past_counts > 0
    w_past = jnp.sqrt(state.past_counts / jnp.maximum(counts_C, 1.0))

    def column_update(cw, new_leaf):  # class axis is the last axis of kernel and bias
        blended = jnp.where(seen_before, (cw * w_past + new_leaf) / (w_past + 1.0), new_leaf)
        return jnp.where(present, blended, cw).astype(cw.dtype)

    cw = jax.tree.map(column_update, state.cw, new)
    return HeadState(cw, (state.past_counts + counts_C).astype(state.past_counts.dtype))


AVERAGES = ("batch", "all")


@jax.jit
def zero_head(tw: Params, cw: Params, restore_C: jax.Array) -> Params:
    """CWR+'s tw = 0 (Alg. 2 line 5), except the classes in ``restore_C`` that start from cw; bias 0."""
    return {
        "kernel": jnp.where(restore_C, cw["kernel"], 0).astype(tw["kernel"].dtype),
        "bias": jnp.zeros_like(tw["bias"]),
    }


@functools.partial(jax.jit, static_argnames="avg")
def mean_shift(tw: Params, present_C: jax.Array, avg: str = "batch") -> Params:
    """Alg. 2 line 10's new class weights tw[j] − avg(tw) (bias: zero).

    ``avg='batch'``: avg is the mean over every entry of the kernel columns j with
    ``present_C[j]`` (the batch's classes); ``avg='all'``: the mean over the whole kernel.
    """
    kernel = tw["kernel"]
    if avg == "batch":
        columns = jnp.sum(present_C.astype(kernel.dtype))
        mean = jnp.sum(jnp.where(present_C, kernel, 0)) / (columns * kernel.shape[0])
    else:
        mean = jnp.mean(kernel)
    return {"kernel": (kernel - mean).astype(kernel.dtype), "bias": jnp.zeros_like(tw["bias"])}


def reset_head(params: Params, consolidated: HeadState, counts_C: jax.Array, path: str = HEAD) -> Params:
    """Zero-initialised tw in ``params`` (CWR+, AR1), restoring cw for classes seen again (NI/NIC)."""
    restore = (counts_C > 0) & (consolidated.past_counts > 0)
    return with_head(params, zero_head(head_of(params, path), consolidated.cw, restore), path)


def consolidate_mean_shift(
    consolidated: HeadState, params: Params, counts_C: jax.Array, avg: str, path: str = HEAD
) -> HeadState:
    """Alg. 2-3: cw[j] = tw[j] − avg(tw) for the batch's classes (blending classes seen again)."""
    return consolidate(consolidated, mean_shift(head_of(params, path), counts_C > 0, avg), counts_C)


def eval_with_cw(state, path: str = HEAD) -> Params:
    """Θ̄ with the consolidated head cw (Alg. 1-2 line 11, Alg. 3 line 15); ``state.strategy_state``
    is a ``HeadState`` (CWR, CWR+) or holds one as ``.head`` (AR1)."""
    consolidated = state.strategy_state
    consolidated = consolidated if isinstance(consolidated, HeadState) else consolidated.head
    return with_head(state.params, consolidated.cw, path)


def reset_head_optimizer(opt_state: optax.OptState, tx: optax.GradientTransformation, params: Params, path: str = HEAD):
    """``opt_state`` whose leaves under the classifier at ``path`` (momentum, Adam moments) are
    those of a fresh ``tx.init``: a head re-initialised before a batch (AR1's tw = 0, Alg. 3
    line 7) starts its optimizer again too, as CWR+ does (``fresh_optimizer``); the shared
    weights keep theirs."""
    fresh = tx.init(params)
    keys = list(transforms.path_keys(path))

    def pick(tree_path, old, new):
        names = [k.key for k in tree_path if isinstance(k, jax.tree_util.DictKey)]
        under_head = any(names[i : i + len(keys)] == keys for i in range(len(names)))
        return new if under_head else old

    return jax.tree_util.tree_map_with_path(pick, opt_state, fresh)


def fresh_optimizer(params: Params, tx: optax.GradientTransformation, index: jax.Array) -> optax.OptState:
    """A fresh optimizer state for batch ``index`` (the head is re-initialised, so its momentum
    starts again) with Θ̄ frozen after B_1 (``transforms.freeze_body``; Alg. 1-2 lines 7-8)."""
    return transforms.set_frozen(tx.init(params), index > 0)
