"""Optax building blocks for the regularisation strategies (EWC, SI, AR1), usable from plain optax code.

- ``quadratic_anchor_penalty``: the EWC/SI penalty (λ/2)·Σ_k F̂_k·(θ_k − θ*_k)² (eq. 6) applied in
  weight-decay style (eq. 7): adds λ·F̂·(θ − Θ*) to the incoming gradient. It goes FIRST in the chain,
  so the base optimizer (SGD, momentum, Adam) sees task gradient + penalty gradient.
- ``si_path_tracker``: a pass-through that goes LAST in the chain, where its input is the update Δθ
  actually applied; it receives the raw task-loss gradient g as the keyword extra argument
  ``task_grads`` and accumulates the SI path integral Σ −g·Δθ (eq. 9-10, with the minus sign that eq. 9 drops:
  importance comes out non-negative for SGD). Because Δθ is the applied update, it is right for any
  base optimizer, not only plain SGD (where it reduces to η·g²).

Typical use (the order matters)::

    tx = optax.chain(quadratic_anchor_penalty(strength), base_optimizer, si_path_tracker())
    updates, opt_state = tx.update(grads, opt_state, params, task_grads=grads)

Between batches the strategies read and replace these states inside the chained ``opt_state`` with
the pure helpers below (``anchor_state``/``replace_anchor_state``, ``si_path_state``/``reset_si_path``);
replacements keep every leaf's dtype and, under a mask, the ``optax.MaskedNode`` placeholders, so the
compiled training step is reused by every batch.

``anchor_penalty_in_state(mask)`` is the penalty with λ held in the optimizer state, set per batch
with ``set_hyperparams(opt_state, strength=λ)``: a hyper-grid over λ then runs in one compiled
program. Its state keeps the product λ·F̂ too, rewritten whenever λ or F̂ is (``set_hyperparams``,
``replace_anchor_state``), so a step computes only (λ·F̂)·(θ − Θ*), the same bits as before, without
a pass over the parameters to form λ·F̂ again. ``freeze_body(head)`` zeroes the update of
every parameter outside the classifier while its state flag is set (CWR, CWR+ after B_1).

Masks follow ``optax.masked``: a pytree of Python bools (or a callable params -> such a pytree),
``True`` where the transformation applies. Unmasked-out leaves get no penalty, no importance and no
anchor (their state holds ``optax.MaskedNode``); ``exclude_mask("head")`` builds the mask AR1 uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
Mask = Any  # pytree of bools (prefix of params) or Callable[[Params], pytree of bools]


class QuadraticAnchorState(NamedTuple):
    """State of ``quadratic_anchor_penalty``: anchor weights Θ* and (clipped) importance F̂."""

    anchor: Params
    importance: Params


class AnchorPenaltyState(NamedTuple):
    """State of ``anchor_penalty_in_state``: λ, the penalty's Θ* and F̂, and λ·F̂ (``weighted``),
    which each step multiplies by (θ − Θ*). ``weighted`` is a cache: it is written with λ or F̂."""

    strength: jax.Array
    penalty: QuadraticAnchorState
    weighted: Params


class SIPathState(NamedTuple):
    """State of ``si_path_tracker``: Σ −g·Δθ since the last reset, and the weights at that reset."""

    path: Params
    start: Params


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def map_unmasked(fn: Callable[..., jax.Array], template: Params, *others: Params) -> Params:
    """``jax.tree.map(fn, template, *others)`` that keeps ``MaskedNode`` wherever ``template`` has one.

    ``others`` may be full parameter trees or trees with the same ``MaskedNode`` placeholders.
    """
    return jax.tree.map(
        lambda t, *rest: t if _is_masked(t) else fn(t, *rest),
        template,
        *others,
        is_leaf=_is_masked,
    )


def _cast_like(template: Params, new: Params) -> Params:
    """``new`` with ``template``'s dtypes (strongly typed: no recompile) and ``MaskedNode`` placeholders."""

    def cast(old: jax.Array, value: Any) -> jax.Array:
        value = jnp.asarray(value, old.dtype)
        if value.shape != old.shape:
            raise ValueError(f"replacement leaf has shape {value.shape}; the stored leaf has shape {old.shape}")
        return value

    return map_unmasked(cast, template, new)


def unmask(tree: Params, params: Params, fill: float = 0.0) -> Params:
    """A full parameter-shaped tree: ``tree``'s values, ``fill`` where ``tree`` has a ``MaskedNode``."""
    return jax.tree.map(
        lambda t, p: jnp.full(p.shape, fill, p.dtype) if _is_masked(t) else t,
        tree,
        params,
        is_leaf=_is_masked,
    )


def exclude_mask(*names: str) -> Callable[[Params], Params]:
    """Mask (for ``optax.masked``) that is False for every leaf under a dict key in ``names``.

    ``exclude_mask("head")`` selects the shared weights Θ̄ of a ``Classifier`` (AR1: the SI
    importance and the anchor never touch the head).
    """

    def mask_fn(params: Params) -> Params:
        def keep(path, _leaf) -> bool:
            return not any(isinstance(k, jax.tree_util.DictKey) and k.key in names for k in path)

        return jax.tree_util.tree_map_with_path(keep, params)

    return mask_fn


def path_keys(path: str) -> tuple[str, ...]:
    """``"head"`` or ``"decoder/out"``: the dict keys of a layer under ``params['params']``."""
    return tuple(k for k in path.split("/") if k)


def exclude_path(path: str) -> Callable[[Params], Params]:
    """Mask (for ``optax.masked``) that is False for every leaf of the layer at ``path`` (``"head"``,
    ``"decoder/out"``: dict keys below ``params['params']``, or below the root of a tree without it)."""
    keys = path_keys(path)

    def mask_fn(params: Params) -> Params:
        def keep(tree_path, _leaf) -> bool:
            names = [k.key for k in tree_path if isinstance(k, jax.tree_util.DictKey)]
            if names[:1] == ["params"]:
                names = names[1:]
            return tuple(names[: len(keys)]) != keys

        return jax.tree_util.tree_map_with_path(keep, params)

    return mask_fn


def _like_updates(tree: Params, updates: Params) -> Params:
    """``tree`` (a full parameter tree) with ``updates``' ``MaskedNode`` placeholders: under
    ``optax.masked`` or ``optax.multi_transform`` the updates are masked but an extra argument
    such as ``task_grads`` arrives whole (unless ``mask_compatible_extra_args=True``); either works."""
    return jax.tree.map(lambda u, t: u if _is_masked(u) else t, updates, tree, is_leaf=_is_masked)


def _maybe_masked(tx: optax.GradientTransformation, mask: Mask | None) -> optax.GradientTransformationExtraArgs:
    if mask is None:
        return optax.with_extra_args_support(tx)
    # The extra argument ``task_grads`` has the params' structure: mask it like the updates.
    return optax.masked(tx, mask, mask_compatible_extra_args=True)


def quadratic_anchor_penalty(
    strength: float | optax.Schedule, mask: Mask | None = None
) -> optax.GradientTransformationExtraArgs:
    """Adds ``strength·F̂·(θ − Θ*)`` to the incoming gradient (EWC/SI penalty, eq. 6-7).

    ``strength`` is a float or, as in ``optax.add_decayed_weights``, a schedule ``count -> λ``
    (``optax.inject_hyperparams`` then evaluates it at each update's step count; the state still
    holds the ``QuadraticAnchorState`` that ``anchor_state``/``replace_anchor_state`` reach).

    The state starts with Θ* = the initial params and F̂ = 0, so until ``replace_anchor_state``
    sets an importance the chain computes exactly the base optimizer's updates. Put it first in
    the chain: the penalty gradient then goes through the base optimizer like the task gradient
    (eq. 7 for plain SGD: θ' = θ − η·g − η·λ·F̂·(θ − θ*)); stability needs η·λ·max F̂ ≤ 1.
    """

    if callable(strength):
        return optax.inject_hyperparams(quadratic_anchor_penalty, static_args="mask")(strength=strength, mask=mask)

    def update_fn(updates, state: QuadraticAnchorState, params=None):
        _check_params(params)
        updates = jax.tree.map(
            lambda g, f, p, a: g + (strength * f * (p - a)).astype(g.dtype),
            updates,
            state.importance,
            params,
            state.anchor,
        )
        return updates, state

    return _maybe_masked(optax.GradientTransformation(_init_anchor, update_fn), mask)


def _init_anchor(params: Params) -> QuadraticAnchorState:
    """Θ* = the initial params, F̂ = 0: the penalty adds nothing until an importance is set."""
    return QuadraticAnchorState(
        anchor=jax.tree.map(jnp.array, params),  # a copy, not an alias of the live params
        importance=jax.tree.map(jnp.zeros_like, params),
    )


def _check_params(params: Params | None) -> None:
    if params is None:
        raise ValueError("the anchor penalty needs the current params: call tx.update(grads, state, params)")


def _weighted(strength: jax.Array, importance: Params) -> Params:
    """λ·F̂ per leaf, in the dtype λ·F̂·(θ − Θ*) had when it was formed every step."""
    return map_unmasked(lambda f: strength * f, importance)


def si_path_tracker(mask: Mask | None = None) -> optax.GradientTransformationExtraArgs:
    """Pass-through that accumulates the SI path integral ``path += −g·Δθ`` (eq. 9-10).

    Place it last in the chain: its input ``updates`` is then the update Δθ that
    ``optax.apply_updates`` applies, whatever the base optimizer. ``g`` is the raw task-loss
    gradient (without the penalty), passed as ``tx.update(..., task_grads=g)``. Under
    ``optax.masked(si_path_tracker(), m)`` or ``optax.multi_transform`` no flag is needed: ``g`` may
    be the full gradient (or one masked like the updates).
    """

    def init_fn(params: Params) -> SIPathState:
        return SIPathState(path=jax.tree.map(jnp.zeros_like, params), start=jax.tree.map(jnp.array, params))

    def update_fn(updates, state: SIPathState, params=None, *, task_grads=None, **extra_args):
        del params, extra_args
        if task_grads is None:
            raise ValueError("si_path_tracker needs the raw task gradient: tx.update(..., task_grads=grads)")
        task_grads = _like_updates(task_grads, updates)
        path = jax.tree.map(lambda acc, g, delta: acc - (g * delta).astype(acc.dtype), state.path, task_grads, updates)
        return updates, state._replace(path=path)

    return _maybe_masked(optax.GradientTransformationExtraArgs(init_fn, update_fn), mask)


# Pure helpers on a (chained, possibly masked) optimizer state. ----------------------------------


def anchor_state(opt_state: optax.OptState) -> QuadraticAnchorState:
    """The ``QuadraticAnchorState`` inside ``opt_state`` (``MaskedNode`` at masked-out leaves)."""
    found = optax.tree.get(opt_state, "QuadraticAnchorState")
    if found is None:
        raise KeyError("opt_state holds no quadratic_anchor_penalty state")
    return found


def importance_report(raw_importance, opt_state: optax.OptState) -> dict:
    """``Strategy.importance`` for penalty strategies (EWC, SI, AR1): the raw accumulated
    importance F and the clipped F̂ the penalty uses (from its state)."""
    return {"F": raw_importance, "F_hat": anchor_state(opt_state).importance}


def replace_anchor_state(
    opt_state: optax.OptState, *, anchor: Params | None = None, importance: Params | None = None
) -> optax.OptState:
    """``opt_state`` with a new anchor Θ* and/or importance F̂.

    ``anchor``/``importance`` may be full parameter trees: values at masked-out leaves are
    dropped and every leaf is cast to the stored dtype.
    """
    old = anchor_state(opt_state)
    new = QuadraticAnchorState(
        anchor=old.anchor if anchor is None else _cast_like(old.anchor, anchor),
        importance=old.importance if importance is None else _cast_like(old.importance, importance),
    )
    return _reweigh(optax.tree.set(opt_state, QuadraticAnchorState=new))


def si_path_state(opt_state: optax.OptState) -> SIPathState:
    """The ``SIPathState`` inside ``opt_state`` (``MaskedNode`` at masked-out leaves)."""
    found = optax.tree.get(opt_state, "SIPathState")
    if found is None:
        raise KeyError("opt_state holds no si_path_tracker state")
    return found


def reset_si_path(opt_state: optax.OptState, params: Params) -> optax.OptState:
    """Zero path, start point = ``params``: call before training each batch B_i."""
    old = si_path_state(opt_state)
    new = SIPathState(
        path=map_unmasked(jnp.zeros_like, old.path),
        start=_cast_like(old.start, params),
    )
    return optax.tree.set(opt_state, SIPathState=new)


def si_batch_importance(tracker: SIPathState, params: Params, xi: float) -> Params:
    """SI importance of the batch just trained: F^i_k = max(path_k / (T_k² + ξ), 0) (eq. 10).

    T_k = θ_k − θ_k(start) is the total move of the weight during the batch. The path −g·Δθ can
    turn negative for some weights when the penalty is active: the batch importance is clipped
    at zero so F only accumulates. ``MaskedNode`` leaves stay masked.
    """
    return map_unmasked(
        lambda path, start, p: jnp.maximum(path / ((p - start) ** 2 + xi), 0.0).astype(path.dtype),
        tracker.path,
        tracker.start,
        params,
    )


def second_moment(opt_state: optax.OptState) -> Params:
    """The optimizer's running mean of squared gradients ν (Adam's ``nu``, RMSprop's too), as
    stored (no bias correction): an importance F^i read from the state at no extra cost (the
    paper's conclusion proposes it). A ValueError when the optimizer keeps no ν (SGD)."""
    nu = optax.tree.get(opt_state, "nu")
    if nu is None:
        raise ValueError("importance=adam_nu needs an optimizer with a second moment ν (optimizer=adam)")
    return nu


# Hyperparameters in the optimizer state. ------------------------------------------------------


def anchor_penalty_in_state(mask: Mask | None = None) -> optax.GradientTransformationExtraArgs:
    """``quadratic_anchor_penalty`` whose strength λ lives in the optimizer state (0 until set).

    Set it with ``set_hyperparams(opt_state, strength=λ)``: λ is then a traced value, so runs
    and grid points with different λ share one compiled training step. The state
    (``AnchorPenaltyState``) holds λ·F̂ as well, so a step adds (λ·F̂)·(θ − Θ*) to the gradient
    without forming λ·F̂ again (eq. 7).
    """

    def init_fn(params: Params) -> AnchorPenaltyState:
        penalty = _init_anchor(params)
        strength = jnp.zeros([], jnp.float32)
        return AnchorPenaltyState(strength, penalty, _weighted(strength, penalty.importance))

    def update_fn(updates, state: AnchorPenaltyState, params=None):
        _check_params(params)
        updates = jax.tree.map(
            lambda g, w, p, a: g + (w * (p - a)).astype(g.dtype), updates, state.weighted, params, state.penalty.anchor
        )
        return updates, state

    return _maybe_masked(optax.GradientTransformation(init_fn, update_fn), mask)


def _reweigh(opt_state: optax.OptState) -> optax.OptState:
    """Rewrites the cached λ·F̂ of an ``anchor_penalty_in_state`` (if any) after λ or F̂ changed."""
    found = optax.tree.get(opt_state, "AnchorPenaltyState")
    if found is None:
        return opt_state
    weighted = _weighted(found.strength, found.penalty.importance)
    return optax.tree.set(opt_state, AnchorPenaltyState=found._replace(weighted=_cast_like(found.weighted, weighted)))


def set_hyperparams(opt_state: optax.OptState, **values: Any) -> optax.OptState:
    """Writes injected hyperparameters (``optax.inject_hyperparams``: ``learning_rate``,
    ``strength``, ...) into ``opt_state``, each cast to the stored dtype (no recompile).
    Every hyperparameter of that name is set; a name the state does not hold is a KeyError."""
    for name, value in values.items():
        old = optax.tree.get(opt_state, name)
        if old is None:
            raise KeyError(f"opt_state holds no injected hyperparameter {name!r}")
        opt_state = optax.tree.set(opt_state, **{name: jnp.asarray(value, old.dtype)})
    return _reweigh(opt_state) if "strength" in values else opt_state


# Frozen shared weights (CWR, CWR+). ------------------------------------------------------------


class FrozenBodyState(NamedTuple):
    """State of ``freeze_body``: whether the parameters outside the classifier are frozen."""

    frozen: jax.Array  # bool []


def freeze_body(head: str = "head") -> optax.GradientTransformationExtraArgs:
    """Zeroes the updates of every parameter outside the classifier layer at path ``head`` (a key of
    ``params['params']``, or ``"a/b"`` for a nested one) while frozen.

    Put it last in the chain: the body's applied update is then exactly zero and Θ̄ stays
    bitwise unchanged whatever the base optimizer. The flag starts False; strategies set it
    with ``set_frozen`` (CWR: Θ̄ learns on B_1 only, Alg. 1 lines 7-8). The engine trains a
    frozen body's batches on cached penultimate features when that gives the same result.
    """
    body = exclude_path(head)

    def init_fn(params: Params) -> FrozenBodyState:
        del params
        return FrozenBodyState(jnp.zeros((), bool))

    def update_fn(updates, state: FrozenBodyState, params=None, **extra_args):
        del params, extra_args
        updates = jax.tree.map(
            lambda in_body, u: jnp.where(state.frozen, jnp.zeros_like(u), u) if in_body else u, body(updates), updates
        )
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def frozen_body(opt_state: optax.OptState) -> jax.Array | None:
    """The ``freeze_body`` flag inside ``opt_state``; None when the chain has no ``freeze_body``."""
    found = optax.tree.get(opt_state, "FrozenBodyState")
    return None if found is None else found.frozen


def set_frozen(opt_state: optax.OptState, frozen: Any) -> optax.OptState:
    """``opt_state`` with the ``freeze_body`` flag set to ``frozen`` (a traced bool is fine)."""
    if frozen_body(opt_state) is None:
        raise KeyError("opt_state holds no freeze_body state")
    return optax.tree.set(opt_state, FrozenBodyState=FrozenBodyState(jnp.asarray(frozen, bool)))
