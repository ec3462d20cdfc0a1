"""AR1* with latent replay: the model split at a named layer (every model here), the latent memory,
CWR*'s weighted consolidation, the slow/frozen lower layers, the layer-name error, and the strategy
end to end against Naive on split digits."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.config import ConfigError, base_config
from cljax.engine import TrainState, cross_entropy, split_outputs
from cljax.experiment import StrategyJob
from cljax.models import MODELS, Classifier, MLPBody, latent
from cljax.scenarios import load_dataset
from cljax.strategies import StreamShape, ar1_star, make_strategy
from cljax.strategies import memory as mem
from tests.helpers import batch_context, split_digits_final_accuracy, traced

NUM_CLASSES = 10
NUM_BATCHES = 5
CAPACITY = 60
# A 3-unit MLP whose fc1 is the identity: the latent of image x is x itself, so a stored latent
# names its batch, label and row (as the rehearsal tests' images do).
IDENTITY = Classifier(MLPBody((3,)), NUM_CLASSES)


def identity_params():
    params = IDENTITY.init(jax.random.key(0), jnp.zeros((1, 3)))
    params["params"]["body"]["fc1"] = {"kernel": jnp.eye(3), "bias": jnp.zeros(3)}
    return params


def strategy(model=IDENTITY, input_shape=(3,), memory_size=50.0, **hparams):
    stream = StreamShape(input_shape, "float32", NUM_CLASSES, NUM_BATCHES, {"memory_size": memory_size})
    return make_strategy("ar1_star", {"latent_layer": "fc1", **hparams}, stream=stream, model=model)


def stream_batch(i: int, rows: int, memory_size: float, **hparams):
    """Batch i of a 5 x 2 split: ``rows`` images (batch, label, row) of classes 2i and 2i+1."""
    y = np.array([2 * i + (r % 2) for r in range(rows)], np.int32)
    x = np.zeros((CAPACITY, 3), np.float32)
    x[:rows] = np.stack([np.full(rows, i), y, np.arange(rows)], axis=1)
    return batch_context(
        i,
        y=y,
        num_classes=NUM_CLASSES,
        x=jnp.asarray(x),
        capacity=CAPACITY,
        num_batches=NUM_BATCHES,
        hparams=traced("ar1_star", memory_size=memory_size, **hparams),
        apply_fn=IDENTITY.apply,
    )


def test_latent_memory_keeps_its_capacity_and_the_authors_balance():
    """After B_i the memory holds min(memory_size, seen) latents (float32, fixed slots): ⌊memory_size / i⌋
    of B_i, the rest older latents that survived random replacement (a subset of the previous memory).
    memory_size=50 in a buffer of 60 slots (a grid's largest): slots 50-59 are never used."""
    s = strategy(memory_size=60.0)
    params = identity_params()
    state = TrainState(params, (), s.init(params))
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)  # vmapped over two members
    traces = []
    refill = jax.jit(
        lambda st, c: (
            traces.append(1),
            jax.vmap(lambda m: ar1_star.refill(m, c, params, s.after_batch.keywords["split"]))(st),
        )[1]
    )
    memories, previous = states.strategy_state.memory, None
    for i, n in enumerate((55, 50, 30, 60, 45)):
        memories = refill(memories, stream_batch(i, n, 50.0))
        memory = jax.tree.map(lambda a: np.asarray(a[0]), memories)
        assert memory.x.dtype == np.float32 and memory.x.shape == (60, 3) and not memory.valid[50:].any()
        assert memory.valid.sum() == 50
        counts = np.bincount(memory.batch[memory.valid], minlength=NUM_BATCHES)
        assert counts[i] == 50 // (i + 1), counts
        valid = memory.valid
        np.testing.assert_array_equal(memory.x[valid, 0], memory.batch[valid])  # the latent is its image
        np.testing.assert_array_equal(memory.x[valid, 1], memory.y[valid])
        stored = {tuple(r) for r in memory.x[valid].astype(int)}
        assert len(stored) == 50, "a row was stored twice"
        if previous is not None:
            assert {r for r in stored if r[0] < i} <= previous
        previous = stored
    assert len(traces) == 1, "the memory update recompiled between batches"


def test_cwr_star_consolidation_matches_a_hand_computation():
    """Classes 0 and 1 were consolidated before (10 examples each); the memory holds latents of
    classes 0, 0, 1; B_i has 5 of class 2 and 3 of class 3. cur = (2, 1, 5, 3) (batch and memory,
    the authors' ``examples_per_class(train_y + rm_y)``); avg = mean of the 4 columns of tw;
    cw[j] = (cw[j]·w + tw[j] − avg) / (w + 1), w = sqrt(past_j / cur_j), for the classes seen before;
    tw[j] − avg for the others; past becomes (12, 11, 5, 3)."""
    s = strategy(model=Classifier(MLPBody((2,)), 4), input_shape=(2,), memory_size=3.0)
    params = Classifier(MLPBody((2,)), 4).init(jax.random.key(1), jnp.zeros((1, 2)))
    st = s.init(params)
    cw = jnp.asarray([[1.0, -1.0, 0.0, 0.0], [2.0, 0.5, 0.0, 0.0]])
    memory = st.memory._replace(valid=jnp.asarray([True, True, True]), y=jnp.asarray([0, 0, 1], jnp.int32))
    st = st._replace(
        head=st.head._replace(cw={"kernel": cw, "bias": jnp.zeros(4)}, past_counts=jnp.asarray([10.0, 10.0, 0, 0])),
        memory=memory,
    )
    ctx = batch_context(1, y=[2] * 5 + [3] * 3, num_classes=4, capacity=8, hparams=traced("ar1_star", memory_size=3.0))
    ctx = dataclasses.replace(ctx, data={"x": jnp.zeros((8, 2)), "y": ctx.data["y"]}, apply_fn=params_apply(4))
    tx = s.transform(optax.sgd(0.1))
    started, _ = s.before_batch(TrainState(params, tx.init(params), st), dataclasses.replace(ctx, tx=tx))
    tw0 = np.asarray(started.params["params"]["head"]["kernel"])
    np.testing.assert_array_equal(tw0, np.asarray(cw))  # classes 0, 1 (in the memory) start from cw; 2, 3 from 0
    tw = jnp.asarray([[3.0, 1.0, 2.0, -2.0], [0.0, 1.0, 4.0, 2.0]])  # mean 1.375
    trained = started._replace(params=with_kernel(started.params, tw))
    out = s.after_batch(trained, ctx).strategy_state.head
    w0, w1 = np.sqrt(10 / 2), np.sqrt(10 / 1)
    want = np.array(
        [
            [(1.0 * w0 + 1.625) / (w0 + 1), (-1.0 * w1 - 0.375) / (w1 + 1), 0.625, -3.375],
            [(2.0 * w0 - 1.375) / (w0 + 1), (0.5 * w1 - 0.375) / (w1 + 1), 2.625, 0.625],
        ]
    )
    np.testing.assert_allclose(np.asarray(out.cw["kernel"]), want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.past_counts), [12.0, 11.0, 5.0, 3.0])


def params_apply(num_classes):
    return Classifier(MLPBody((2,)), num_classes).apply


def with_kernel(params, kernel):
    head = {**params["params"]["head"], "kernel": kernel}
    return {**params, "params": {**params["params"], "head": head}}


SMALL = types.SimpleNamespace(hidden_sizes=(16, 8), dense_init="lecun", lrn=True, aux_loss_weight=0.3)


@pytest.mark.parametrize("name,input_shape,layer", [("mlp", (8, 8, 1), "fc1"), ("cifarnet", (32, 32, 3), "conv3")])
def test_replaying_latents_through_the_upper_layers_equals_the_whole_model(name, input_shape, layer):
    """Inference: new images through the whole net followed by stored latents through the layers above
    the split give the logits of the whole net on both sets of images (the split is generic: the
    other models are checked on shapes below, their compilation being long on CPU)."""
    model = MODELS[name](SMALL, 5)
    split = latent.split_model(model, input_shape, layer)
    x_new, x_old = (jax.random.uniform(jax.random.key(k), (n, *input_shape)) for k, n in ((1, 2), (2, 3)))
    params = model.init(jax.random.key(0), x_new)

    @jax.jit
    def both(params):
        z = latent.latents(model.apply, params, x_old, split)
        with latent.replaying(split, z):
            replayed = model.apply(params, x_new, train=False)
        return replayed, model.apply(params, jnp.concatenate([x_new, x_old]), train=False)

    replayed, whole = both(params)
    assert replayed.shape == (5, 5)
    np.testing.assert_allclose(np.asarray(replayed), np.asarray(whole), rtol=1e-5, atol=1e-5)


def test_googlenet_replays_above_an_inception_block_with_its_auxiliary_classifiers():
    """GoogLeNet split at inception_4b (shapes): the latent is the block's output; training returns
    logits for the 2 new and 3 replayed rows, aux1 (below the split: new rows only) padded to 5 rows
    with its weight 0 on the replayed ones, aux2 (above) computed on all 5."""
    model = MODELS["googlenet"](SMALL, 5)
    split = latent.split_model(model, (64, 64, 3), "inception_4b")
    assert ("body", "aux1", "classifier") in split.lower and ("body", "inception_4c") not in split.lower
    x = jnp.zeros((2, 64, 64, 3))

    def train_outputs(params):
        with latent.replaying(split, jnp.zeros((3, *split.shape))):
            return model.apply(params, x, train=True, rngs={"dropout": jax.random.key(0)})

    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    logits, ((w1, aux1), (_, aux2)) = split_outputs(jax.eval_shape(train_outputs, params))
    assert logits.shape == aux1.shape == aux2.shape == (5, 5) and w1.shape == (5,)
    assert latent._pad_aux(0.3, jnp.ones((2, 5)), 5)[0].tolist() == pytest.approx([0.3, 0.3, 0, 0, 0])


def test_every_model_splits_at_its_named_layers():
    """CaffeNet and NiN (128x128) on shapes: the valid layers, a latent's shape, and the lower part."""
    caffenet = latent.split_model(MODELS["caffenet"](SMALL, 50), (128, 128, 3), "conv5")
    assert caffenet.shape == (13, 13, 256) and ("body", "conv4") in caffenet.lower
    assert ("body", "fc6") not in caffenet.lower
    nin = latent.split_model(MODELS["nin"](SMALL, 50), (128, 128, 3), "body/cccp6")
    assert nin.shape == (13, 13, 384) and ("body", "conv3") in nin.lower and ("body", "conv4") not in nin.lower


def test_the_replay_step_equals_the_whole_model_on_the_mixed_batch():
    """A replay step (new images through the whole net, ⌈B·M/N⌉ stored latents above the split, computed
    with the current lower layers) has the loss of the whole net on the new images followed by the
    stored latents' own images, and its gradient above the split (fc2, head); below it (fc1) the
    replayed rows add nothing (their latents are constants: the lower layers train, if at all, on
    the new images)."""
    model = Classifier(MLPBody((6, 5)), 4)
    s = strategy(model=model, input_shape=(3,), memory_size=8.0, latent_layer="fc1", replay_rows=6)
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    split = s.gradients.keywords["split"]
    x_old = jax.random.normal(jax.random.key(1), (8, 3))
    st = s.init(params)
    memory = st.memory._replace(
        x=latent.latents(model.apply, params, x_old, split),
        y=jnp.arange(8, dtype=jnp.int32) % 4,
        valid=jnp.arange(8) < 7,  # slot 7 empty
    )
    st = st._replace(memory=memory, replay_share=jnp.float32(7 / 16))  # M = 7 of N = 16: ⌈4·7/16⌉ = 2 per step
    state = TrainState(params, (), st)
    mini = {"x": jax.random.normal(jax.random.key(2), (4, 3)), "y": jnp.asarray([0, 1, 2, 3], jnp.int32)}
    weights = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # a partial last mini-batch

    def loss_and_grad(p, batch, w):
        def mean(p):
            logits, _ = split_outputs(model.apply(p, batch["x"], train=True))
            return jnp.sum(cross_entropy(logits, batch, None) * w) / jnp.sum(w)

        return jax.value_and_grad(mean)(p)

    key = jax.random.key(3)
    loss, grads = s.gradients(state, mini, weights, key, loss_and_grad)
    idx, _ = mem.sample(memory, key, 6)
    whole = {"x": jnp.concatenate([mini["x"], x_old[idx]]), "y": jnp.concatenate([mini["y"], memory.y[idx]])}
    want_loss, want_grads = loss_and_grad(
        params, whole, jnp.concatenate([weights, jnp.asarray([1.0, 1.0, 0, 0, 0, 0])])
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    above = lambda g: (g["params"]["body"]["fc2"], g["params"]["head"])  # noqa: E731
    for g, w in zip(jax.tree.leaves(above(grads)), jax.tree.leaves(above(want_grads)), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    _, new_only = loss_and_grad(params, mini, weights)  # fc1: the new rows' share of the mean loss
    share = jnp.sum(weights) / (jnp.sum(weights) + 2.0)
    below = lambda g: g["params"]["body"]["fc1"]  # noqa: E731
    for g, w in zip(jax.tree.leaves(below(grads)), jax.tree.leaves(below(new_only)), strict=True):
        np.testing.assert_allclose(g, share * w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("factor", [0.0, 0.5])
def test_lower_lr_factor_scales_the_lower_layers_updates(factor):
    """On B_i>1 the layers below the split (fc1 and fc2 for a split at fc2) move by ``lower_lr_factor``
    times the update the optimizer gives them (0: exactly unchanged); the layers above do not change."""
    model = Classifier(MLPBody((6, 5)), 4)
    s = strategy(model=model, input_shape=(3,), memory_size=4.0, latent_layer="fc2")
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    base = optax.sgd(0.1, momentum=0.9)
    tx = s.transform(base)
    ctx = batch_context(
        1, y=[0, 1], num_classes=4, hparams=traced("ar1_star", memory_size=4.0, lower_lr_factor=factor), tx=tx
    )
    state, _ = s.before_batch(TrainState(params, tx.init(params), s.init(params)), ctx)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    plain, _ = base.update(grads, base.init(params), params)
    for layer in ("fc1", "fc2"):
        for leaf in ("kernel", "bias"):
            got = updates["params"]["body"][layer][leaf]
            np.testing.assert_array_equal(got, factor * plain["params"]["body"][layer][leaf])
    np.testing.assert_array_equal(updates["params"]["head"]["kernel"], plain["params"]["head"]["kernel"])


def test_a_wrong_latent_layer_is_one_clear_error():
    config = base_config()
    config.strategies = "ar1_star"
    config.hidden_sizes = (16,)
    config.ar1_star.latent_layer = "conv5"
    dataset = load_dataset("digits")
    with pytest.raises(ConfigError) as error:
        StrategyJob.build(config, "ar1_star", dataset)
    message = str(error.value)
    assert message == (
        "ar1_star.latent_layer='conv5' is not a layer of model Classifier to split at; allowed: body/fc1, body"
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_ar1_star_beats_naive_on_split_digits(digits):
    """Naive keeps only the last batch's 2 classes (about 0.2); 200 latents at fc1 keep the earlier
    classes (measured: 0.47)."""
    naive, star = split_digits_final_accuracy(digits, "naive"), split_digits_final_accuracy(digits, "ar1_star")
    assert naive < 0.3
    assert star > naive + 0.2, (star, naive)


def test_core50_nc_config_takes_ar1_star_and_its_latent_layer():
    """``ar1_star,MODEL[,LAYER]``: AR1's Table 4 column, the model's default latent layer or the one given."""
    from cljax.config import strategy_hparams, validate
    from tests.test_paper_configs import load_config

    config = load_config("core50_nc", "ar1_star,googlenet")
    validate(config)
    hp = strategy_hparams(config, "ar1_star")
    assert config.strategies == "ar1_star" and hp.latent_layer == "inception_5a" and hp.memory_size == 1500.0
    assert (hp.epochs_first, hp.lr_first, hp.epochs, hp.lr) == (4, 0.0003, 2, 0.0003)  # Table 4, AR1, GoogLeNet
    assert load_config("core50_nc", "ar1_star,caffenet,fc6").ar1_star.latent_layer == "fc6"


@pytest.mark.parametrize("lower_dropout", [False, True])
def test_dropout_below_the_split_is_off_unless_asked(lower_dropout):
    """CifarNet split at its body (every dropout below the split): in training mode the new rows' logits
    are the inference-mode ones when ``lower_dropout=False`` (the authors' ``lat_features.eval()``),
    and differ when it is True."""
    model = MODELS["cifarnet"](SMALL, 5)
    split = latent.split_model(model, (32, 32, 3), "body")
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    params = model.init(jax.random.key(0), x)

    @jax.jit
    def logits(params):
        with latent.replaying(split, jnp.zeros((1, *split.shape)), lower_dropout=lower_dropout):
            train = model.apply(params, x, train=True, rngs={"dropout": jax.random.key(2)})
        return train[:4], model.apply(params, x, train=False)

    train, inference = logits(params)
    assert np.allclose(train, inference, rtol=1e-5, atol=1e-6) != lower_dropout


def test_frozen_lower_layers_stay_bitwise_unchanged_through_a_stream(digits):
    """Split digits, 3 batches, MLP 16-16 split at fc2, SGD with momentum: with the defaults (lower
    layers trained on B_1, lower_lr_factor=0 after) fc1 and fc2 after B_2 and B_3 are those after
    B_1, bit for bit, while the head moved."""
    from cljax import experiment
    from cljax.scenarios import build_scenario

    config = base_config()
    config.strategies = "ar1_star"
    config.hidden_sizes = (16, 16)
    config.num_runs = 1
    config.num_batches = 3
    config.momentum = 0.9
    config.ar1_star.update(latent_layer="fc2", memory_size=100.0, epochs_first=1, epochs=1)
    job = StrategyJob.build(config, "ar1_star", digits)
    chunk = experiment.Chunk((0,), (0,))
    scenarios = [build_scenario(config, 0, digits)]
    params = []
    experiment.train_chunk(
        job,
        chunk,
        scenarios,
        experiment.start_chunk(job, chunk, scenarios),
        on_checkpoint=lambda p: params.append(jax.device_get(p.states.params["params"])),
    )
    assert len(params) == 3
    for later in params[1:]:
        for layer in ("fc1", "fc2"):
            for leaf in ("kernel", "bias"):
                np.testing.assert_array_equal(later["body"][layer][leaf], params[0]["body"][layer][leaf])
    assert not np.array_equal(params[2]["head"]["kernel"], params[0]["head"]["kernel"])
