"""AR1* with latent replay (Pellegrini, Graffieti, Lomonaco & Maltoni 2020, "Latent Replay for
Real-Time Continual Learning"; the authors' code: vlomonaco/ar1-pytorch, ``ar1star_lat_replay.py``).

The model is split at ``latent_layer`` (``cljax.models.latent``: any model here, by layer name).

- Memory: a fixed number of latent activations (the layer's outputs, float32) with their labels,
  a pytree in the strategy state. After B_i (i batches seen) h = ⌊memory_size / i⌋ patterns of
  B_i, drawn at random, replace h random stored ones (free slots first), as the authors' code
  does (``h = min(rm_sz // (i + 1), n_cur)``; ``idxs_2_replace = np.random.choice(...)``): each
  batch keeps about memory_size / i slots, older batches losing slots at random. The latents are
  computed in inference mode with the weights at the end of the batch.
- Training: every mini-batch holds ``batch_size`` new patterns, run through the whole net, and
  about ``batch_size · M / N`` stored latents (M stored, N in B_i; at most ``replay_rows``), run
  through the layers above the split only, so an epoch replays the memory about once: the
  authors' mix, which gives each mini-batch N : M new to replayed patterns
  (``cur_sz = N // ((N + rm_sz) // mb_size)``, ``n2inject = mb_size − cur_sz``). Replayed
  latents are drawn uniformly with replacement (the authors take the memory in order).
- Below the split the weights learn at ``lower_lr_factor`` times the learning rate (B_1:
  ``lower_lr_factor_first``); 0 freezes them (the authors freeze them from B_1, their MobileNet
  being pre-trained; the default trains them on B_1, for nets trained from scratch, then freezes
  them, so stored latents never age). With ``lower_dropout=False`` (default) dropout below the
  split is off, as the authors run the lower part in inference mode (``lat_features.eval()``).
- Head: CWR* (``head.py``): tw = 0 before each batch except the classes present in B_i or in the
  memory, which start from cw; after the batch those classes are consolidated by mean-shift and
  the weighted update cw[j] = (cw[j]·w_past + (tw[j] − avg)) / (w_past + 1),
  w_past = sqrt(past_j / cur_j), where cur_j counts class j in B_i *and in the memory* and past_j
  accumulates cur_j (the authors' ``consolidate_weights``, ``examples_per_class(train_y + rm_y)``).
  Head bias held at zero (their output layer has none); the head's optimizer state resets with tw.
- Between the split and the head the weights train freely (the authors' default, ``reg_lambda =
  0``: "AR1* free"); ``si=True`` adds AR1's SI penalty (``ar1.py``, eq. 6-7, 10-11), as their
  option ``reg_lambda > 0`` does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cljax import engine, transforms
from cljax.engine import LossAndGrad, Params, TrainState
from cljax.hparams import HParam, choice, flag, non_negative, positive, positive_int
from cljax.models import HEAD, latent
from cljax.strategies import ar1, head
from cljax.strategies import memory as mem
from cljax.strategies.base import BatchContext, Data, Strategy, StrategySpec
from cljax.strategies.penalty import check_penalty, si_after_batch, start_si_batch


def _layer_name(value: Any) -> str | None:
    ok = isinstance(value, str) and bool(value.strip("/"))
    return None if ok else "is invalid; it must name a layer of the model (e.g. 'body/fc1', 'conv5')"


HPARAMS = {
    "latent_layer": HParam(
        "fc1",
        "the layer whose activations are stored and replayed: its path under params (body/conv5) or its "
        "last part (conv5); a wrong name lists the model's",
        _layer_name,
    ),
    "memory_size": positive(1500, "latent patterns the memory holds (the authors' rm_sz: 1500)"),
    "replay_rows": positive_int(64, "most replayed latents per mini-batch (a static shape)"),
    "lower_lr_factor": non_negative(0.0, "learning-rate factor below the latent layer on B_i>1 (0: frozen)"),
    "lower_lr_factor_first": non_negative(1.0, "the same on B_1 (the authors: 0, their net being pre-trained)"),
    "lower_dropout": flag(False, "dropout below the latent layer (the authors: off, lat_features.eval())"),
    "avg": choice("batch", head.AVERAGES, "mean-shift average, as cwr_plus.avg"),
    "si": flag(False, "AR1's SI penalty between latent layer and head (the authors' reg_lambda > 0)"),
    **{k: ar1.HPARAMS[k] for k in ("strength", "max_f", "xi", "w_first", "w_rest", "importance")},
}
TRAINING = dict(ar1.TRAINING)
LATENT_CHUNK = 500  # rows per pass when the stored batch's latents are computed (bounded memory)


class AR1StarState(NamedTuple):
    head: head.HeadState  # consolidated head cw (CWR*)
    importance: Any  # SI importance F over Θ̄ (si=True), else ()
    memory: mem.Memory  # x: latent activations [S, *latent shape], float32
    replay_share: jax.Array  # float32 []: M / N, stored latents per new pattern in this batch


def class_counts(state: TrainState, ctx: BatchContext) -> jax.Array:
    """cur_j: examples of class j in B_i and in the memory (the authors' ``model.cur_j``)."""
    memory = state.strategy_state.memory
    stored = mem.counts(memory, memory.y, ctx.class_counts.shape[0]).astype(ctx.class_counts.dtype)
    return ctx.class_counts + stored


def transform(
    base_tx: optax.GradientTransformation, split: latent.LatentSplit, si: bool, source: str, path: str
) -> optax.GradientTransformation:
    # The lower layers' updates scaled by a factor in the state (set per batch, traced: 0 = frozen),
    # after the base optimizer (so it scales the learning rate, momentum included).
    lower = optax.masked(optax.inject_hyperparams(optax.scale)(step_size=1.0), latent.lower_mask(split))
    scaled = optax.chain(base_tx, lower)
    return ar1.transform(scaled, source, path) if si else head.freeze_head_bias(scaled, path)


def init_state(params: Params, slots: int, stream: mem.StreamShape, si: bool, path: str) -> AR1StarState:
    latents = dataclasses.replace(stream, input_dtype="float32")
    importance = ar1.init_ar1_state(params, path).importance if si else ()
    return AR1StarState(
        head.init_head_state(params, path), importance, mem.empty_memory(slots, latents), jnp.zeros((), jnp.float32)
    )


def before_batch(state: TrainState, ctx: BatchContext, si: bool, source: str, path: str) -> tuple[TrainState, Data]:
    if si:
        state = start_si_batch(state, ctx, source)
    st = state.strategy_state
    params = head.reset_head(state.params, st.head, class_counts(state, ctx), path)  # tw = 0 but cur_class
    opt_state = head.reset_head_optimizer(state.opt_state, ctx.tx, params, path)
    factor = jnp.where(ctx.index == 0, ctx.hparams["lower_lr_factor_first"], ctx.hparams["lower_lr_factor"])
    opt_state = transforms.set_hyperparams(opt_state, step_size=factor)
    stored = jnp.sum(st.memory.valid).astype(jnp.float32)
    share = stored / jnp.maximum(ctx.num_examples, 1).astype(jnp.float32)
    return TrainState(params, opt_state, st._replace(replay_share=share)), {}


def replay(
    state: TrainState,
    mini: Data,
    weights_B: jax.Array,
    key: jax.Array,
    loss_and_grad: LossAndGrad,
    split: latent.LatentSplit,
    rows: int,
    lower_dropout: bool,
) -> tuple[jax.Array, Params]:
    """The mean loss and gradient of the mini-batch's new patterns (whole net) together with
    ⌈B·M/N⌉ stored latents (at most ``rows``; the layers above the split only)."""
    st = state.strategy_state
    idx, stored = mem.sample(st.memory, key, rows)
    wanted = jnp.ceil(st.replay_share * weights_B.shape[0])
    stored = stored * (jnp.arange(rows) < wanted)
    replayed = mem.as_minibatch(st.memory, idx, mini)
    mixed = {"x": mini["x"], **mem.concat({k: v for k, v in mini.items() if k != "x"}, replayed)}
    with latent.replaying(split, replayed["x"], lower_dropout):
        return loss_and_grad(state.params, mixed, jnp.concatenate([weights_B, stored]))


def refill(memory: mem.Memory, ctx: BatchContext, params: Params, split: latent.LatentSplit) -> mem.Memory:
    """h = ⌊memory_size / i⌋ random patterns of B_i (all, if fewer) replace as many random stored
    ones, free slots used first; slots beyond memory_size are never used (grid points share one buffer)."""
    slots, capacity = memory.valid.shape[0], ctx.data["y"].shape[0]
    size = jnp.floor(ctx.hparams["memory_size"]).astype(jnp.int32)
    quota = size // (ctx.index + 1)
    old_key, new_key = jax.random.split(ctx.key)
    incoming = jnp.minimum(quota, ctx.num_examples)
    stored = jnp.sum(memory.valid)
    dropped = jnp.maximum(stored + incoming - size, 0)
    memory = memory._replace(rank=mem.random_ranks(jnp.where(memory.valid, 0, mem.NO_GROUP), old_key))
    memory = mem.keep_first(memory, jnp.full((slots,), stored - dropped))
    rank, selected = mem.select_rows(ctx.num_examples, capacity, quota, new_key)
    rows = jnp.argsort(jnp.where(selected, rank, mem.NO_GROUP), stable=True)[: min(slots, capacity)]
    x = ctx.data["x"][rows]  # only the rows that may be stored go through the lower layers
    z = engine.chunked_map(lambda xs: latent.latents(ctx.apply_fn, params, xs, split), LATENT_CHUNK, x)
    allowed = jnp.arange(slots) < size
    return mem.insert(memory, {"x": z, "y": ctx.data["y"][rows]}, rank[rows], selected[rows], ctx.index, allowed)


def after_batch(
    state: TrainState, ctx: BatchContext, split: latent.LatentSplit, avg: str, si: bool, source: str, path: str
) -> TrainState:
    st = state.strategy_state
    consolidated = head.consolidate_mean_shift(st.head, state.params, class_counts(state, ctx), avg, path)
    importance, opt_state = si_after_batch(state, ctx, st.importance, source) if si else ((), state.opt_state)
    memory = refill(st.memory, ctx, state.params, split)
    return TrainState(state.params, opt_state, st._replace(head=consolidated, importance=importance, memory=memory))


def ar1_star(
    hparams: Mapping[str, Any] | None = None, classifier: str = HEAD, model: nn.Module | None = None
) -> Strategy:
    stream = mem.stream_shape(hparams, "ar1_star")
    if model is None:
        raise ValueError("strategy 'ar1_star' splits the model at latent_layer: build it with make_strategy(model=...)")
    values = {**{k: p.default for k, p in HPARAMS.items()}, **hparams}
    split = latent.split_model(
        model, tuple(stream.input_shape), values["latent_layer"], classifier, field="ar1_star.latent_layer"
    )
    si, source = values["si"], values["importance"]
    slots = mem.memory_slots(stream.largest["memory_size"])
    latents = dataclasses.replace(stream, input_shape=split.shape)
    on = functools.partial
    return Strategy(
        name="ar1_star",
        transform=on(transform, split=split, si=si, source=source, path=classifier),
        init=on(init_state, slots=slots, stream=latents, si=si, path=classifier),
        before_batch=on(before_batch, si=si, source=source, path=classifier),
        after_batch=on(after_batch, split=split, avg=values["avg"], si=si, source=source, path=classifier),
        gradients=on(replay, split=split, rows=values["replay_rows"], lower_dropout=values["lower_dropout"]),
        eval_params=on(head.eval_with_cw, path=classifier),
        importance=on(ar1.importance, path=classifier) if si else None,
        data_parallel=False,
    )


def check(values: Mapping[str, Any]) -> None:
    if values["si"]:
        check_penalty(values, "ar1_star")


SPEC = StrategySpec(
    ar1_star,
    HPARAMS,
    TRAINING,
    doc="AR1* with latent replay: CWR* head, latent memory, slow or frozen lower layers (Pellegrini et al. 2020)",
    check=check,
)
