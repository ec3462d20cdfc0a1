"""The pre-trained protocol (configs/fashion_pretrained.py, cljax/pretraining.py) on tiny Fashion-MNIST files."""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from cljax import engine, experiment, pretraining, stream
from cljax.config import ConfigError, validate
from cljax.experiment import StrategyJob
from cljax.models import build_model
from cljax.models import pretrained as pretrained_lib
from cljax.models.pretrained import restore_params
from cljax.scenarios import Dataset, load_fashion_mnist
from tests.official_formats import write_fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def protocol_config(arg: str, data_dir: str):
    """configs/fashion_pretrained.py with everything made tiny: one run of Naive, an 8-unit MLP."""
    config = load_module("configs/fashion_pretrained.py", "fashion_pretrained").get_config(arg)
    config.update(data_dir=data_dir, hidden_sizes=(8,), num_runs=1, strategies="naive", report=False)
    config.update(epochs_first=1, epochs=1, batch_size=16)
    config.pretrain.update(epochs=2, batch_size=16)
    return config


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("fashion"))
    write_fashion_mnist(directory, train_per_class=30, test_per_class=3)
    return directory


@pytest.fixture
def train_calls(monkeypatch):
    """Counts the pre-trainings (``cljax.pretraining.train`` calls)."""
    calls = []
    original = pretraining.train

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pretraining, "train", counting)
    return calls


def test_slices_are_stratified_class_restricted_and_disjoint_from_the_stream():
    labels = np.repeat(np.arange(10), [50, 60, 40, 50, 50, 70, 50, 50, 30, 50])
    labels = np.random.default_rng(1).permutation(labels)
    all10 = pretraining.slice_indices(labels, 10, "all10", seed=0)
    # A stratified 10%: round(0.1 n_c) images of every class.
    np.testing.assert_array_equal(np.bincount(labels[all10], minlength=10), [5, 6, 4, 5, 5, 7, 5, 5, 3, 5])
    half5 = pretraining.slice_indices(labels, 10, "half5", seed=0)
    assert len(half5) == len(all10) == 50
    np.testing.assert_array_equal(np.bincount(labels[half5], minlength=10), [10] * 5 + [0] * 5)
    np.testing.assert_array_equal(pretraining.slice_indices(labels, 10, "scratch", seed=0), all10)
    np.testing.assert_array_equal(pretraining.slice_indices(labels, 10, "all10", seed=0), all10)  # deterministic
    assert not np.array_equal(pretraining.slice_indices(labels, 10, "all10", seed=1), all10)
    assert len(pretraining.slice_indices(labels, 10, "none")) == 0

    x = np.arange(len(labels), dtype=np.float32)[:, None]  # each image names its row
    dataset = Dataset("d", x, labels.astype(np.int32), x[:7], labels[:7].astype(np.int32), 10)
    for name, rows in (("all10", all10), ("half5", half5)):
        part, rest = pretraining.split_dataset(dataset, name, seed=0)
        np.testing.assert_array_equal(part.train_x[:, 0], rows)
        assert not set(part.train_x[:, 0]) & set(rest.train_x[:, 0])  # disjoint
        assert len(part.train_y) + len(rest.train_y) == len(labels)  # the stream has every other image
        np.testing.assert_array_equal(rest.test_x, dataset.test_x)  # the official test set, for both


def test_a_bad_slice_is_one_clear_error(fashion_dir):
    config = protocol_config("all20", fashion_dir)
    with pytest.raises(ConfigError, match=r"^pretrain.slice='all20' is unknown; allowed: none, all10, half5, scratch$"):
        validate(config)
    config = protocol_config("all10", fashion_dir)
    config.init_head = "body"
    with pytest.raises(ConfigError, match=r"^init_head='body' is unknown; allowed: checkpoint, fresh$"):
        validate(config)


def test_the_protocol_pretrains_once_caches_atomically_and_streams_the_rest(
    fashion_dir, tmp_path, train_calls, monkeypatch
):
    config = protocol_config("half5", fashion_dir)
    workdir = str(tmp_path / "w")
    # An interrupted save leaves only a partial directory: the next run trains again and completes.
    original_save = pretrained_lib.save_params

    def interrupted(directory, params):
        original_save(directory, params)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrained_lib, "save_params", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(config, workdir, log=lambda event: None, show_progress=False)
    cache = pretraining.cache_path(config, workdir)
    assert not os.path.exists(cache) and glob.glob(cache + ".partial-*")
    monkeypatch.setattr(pretrained_lib, "save_params", original_save)

    results = experiment.run_experiment(config, workdir, log=lambda event: None, show_progress=False)
    assert len(train_calls) == 2 and os.path.isdir(cache) and not glob.glob(cache + ".partial-*")
    with open(cache + ".json") as f:
        summary = json.load(f)
    assert summary["num_images"] == 30 and len(summary["test_accuracy"]) == 2  # 10% of 300, classes 0-4
    # The stream holds the other 270 images: every batch's classes, none of the slice's images.
    record = results["strategies"]["naive"]["runs"][0]
    assert sum(record["train_examples"]) == 270

    mtime = os.path.getmtime(cache)
    config.num_runs = 2  # another run on the same workdir: the cached weights, not a second pre-training
    config.overwrite = True
    experiment.run_experiment(config, workdir, log=lambda event: None, show_progress=False)
    assert len(train_calls) == 2 and os.path.getmtime(cache) == mtime


def test_every_strategy_starts_its_own_head_on_the_pretrained_body(fashion_dir, tmp_path):
    config = protocol_config("all10", fashion_dir)
    dataset = load_fashion_mnist(fashion_dir)
    path = pretraining.pretrained_params(config, dataset, str(tmp_path), log=lambda s: None)
    saved = restore_params(path)
    key = jax.random.key(3)
    fresh = stream.initial_params(build_model(config, 10), (28, 28, 1), key)
    config.init_checkpoint = path
    for init_head, head in (("fresh", fresh), ("checkpoint", saved)):  # checkpoint: today's rule, same shape
        config.init_head = init_head
        job = StrategyJob.build(config, "naive", dataset)
        state = engine.unstack_member(job.program.init(key[None]))
        for layer in ("kernel", "bias"):
            np.testing.assert_array_equal(state.params["params"]["head"][layer], head["params"]["head"][layer])
        body, saved_body = state.params["params"]["body"], saved["params"]["body"]
        for a, b in zip(jax.tree.leaves(body), jax.tree.leaves(saved_body), strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(fresh["params"]["head"]["kernel"], saved["params"]["head"]["kernel"])


def test_init_checkpoint_skips_the_pretraining(fashion_dir, tmp_path, train_calls):
    script = load_module("scripts/pretrain.py", "pretrain_script")
    out = str(tmp_path / "mlp_all10")
    _, summary = script.run(
        "fashion_mnist", fashion_dir, out, "mlp", log=lambda s: None, slice_name="all10", hidden_sizes=(8,),
        epochs=1, lr=0.001, batch_size=16,
    )  # fmt: skip
    assert summary["num_images"] == 30 and summary["slice"] == "all10" and len(train_calls) == 1
    config = protocol_config("all10", fashion_dir)
    config.init_checkpoint = out
    workdir = str(tmp_path / "w")
    experiment.run_experiment(config, workdir, log=lambda event: None, show_progress=False)
    assert len(train_calls) == 1 and not os.path.exists(os.path.join(workdir, pretraining.CACHE_DIR))


def test_scratch_streams_the_same_images_from_random_weights(fashion_dir, tmp_path, train_calls):
    config = protocol_config("scratch", fashion_dir)
    assert not pretraining.needs_pretraining(config)
    dataset, _ = experiment.prepare(config)
    _, all10_stream = pretraining.split_dataset(load_fashion_mnist(fashion_dir), "all10")
    np.testing.assert_array_equal(dataset.train_x, all10_stream.train_x)
    config.init_checkpoint = str(tmp_path)
    with pytest.raises(ConfigError, match="^pretrain.slice='scratch' starts from random weights"):
        validate(config)


def test_without_a_workdir_the_protocol_needs_its_weights_given(fashion_dir):
    config = protocol_config("all10", fashion_dir)
    dataset, _ = experiment.prepare(config)
    job = StrategyJob.build(config, "naive", dataset)
    with pytest.raises(ConfigError, match=r"^pretrain.slice='all10' trains from pre-trained weights.*init_checkpoint"):
        experiment.run_members(job, dataset, [0])


def test_the_pretrained_cache_is_keyed_by_the_model_fields_and_the_pretraining_section():
    """Weights pre-trained for one model do not serve another: a change to any field the weights
    depend on (the MLP's widths or initialisation, the slice's epochs) is another cache entry; a
    field they do not depend on (the stream's epochs) is the same entry."""
    from cljax.config import base_config

    config = base_config()
    config.pretrain.slice = "all10"
    first = pretraining.cache_path(config, "w")
    for field, value in (("hidden_sizes", (8,)), ("dense_init", "torch"), ("pretrain.epochs", 3)):
        changed = base_config()
        changed.pretrain.slice = "all10"
        section, _, name = field.rpartition(".")
        (changed[section] if section else changed)[name] = value
        assert pretraining.cache_path(changed, "w") != first, field
    config.epochs = 7
    assert pretraining.cache_path(config, "w") == first
