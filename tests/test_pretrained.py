"""Pretrained initialisation (``init_checkpoint``) and scripts/pretrain.py."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import engine, scenarios
from cljax.config import ConfigError, base_config, validate
from cljax.experiment import StrategyJob
from cljax.models.pretrained import merge_pretrained, restore_params, save_params
from cljax.scenarios import Dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_pretrain_script():
    spec = importlib.util.spec_from_file_location("pretrain_script", os.path.join(REPO, "scripts", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_cifar(num_classes: int = 10, per_class: int = 4, seed: int = 0) -> Dataset:
    """A tiny dataset in CIFAR's shapes: 32x32x3 float32 in [0, 1]; each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.2, 0.8, (num_classes, 1, 1, 3))

    def split(n):
        y = np.repeat(np.arange(num_classes, dtype=np.int32), n)
        x = np.clip(means[y] + rng.normal(0, 0.05, (len(y), 32, 32, 3)), 0, 1).astype(np.float32)
        return x, y

    (train_x, train_y), (test_x, test_y) = split(per_class), split(2)
    return Dataset("cifar10", train_x, train_y, test_x, test_y, num_classes)


def tree_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def small_tree(head_classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "body": {"fc1": {"kernel": rng.normal(size=(4, 5)).astype(np.float32), "bias": np.zeros(5, np.float32)}},
            "head": {
                "kernel": rng.normal(size=(5, head_classes)).astype(np.float32),
                "bias": np.ones(head_classes, np.float32),
            },
        }
    }


def test_save_restore_round_trip(tmp_path):
    params = small_tree()
    save_params(str(tmp_path / "ckpt"), params)
    tree_equal(restore_params(str(tmp_path / "ckpt")), params)


def test_restore_of_a_non_checkpoint_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="init_checkpoint="):
        restore_params(str(tmp_path / "empty"))


def test_merge_takes_checkpoint_and_reinitialises_a_head_of_other_size():
    saved, fresh = small_tree(head_classes=3, seed=1), small_tree(head_classes=7, seed=2)
    merged = merge_pretrained(fresh, saved)
    np.testing.assert_array_equal(merged["params"]["body"]["fc1"]["kernel"], saved["params"]["body"]["fc1"]["kernel"])
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    same = merge_pretrained(small_tree(head_classes=3, seed=3), saved)
    tree_equal(same, jax.tree.map(jnp.asarray, saved))


def test_merge_mismatches_name_the_first_path():
    saved = small_tree()
    wrong_shape = small_tree()
    wrong_shape["params"]["body"]["fc1"]["kernel"] = np.zeros((4, 6), np.float32)
    with pytest.raises(ConfigError, match=r"params/body/fc1/kernel.*\(4, 5\).*\(4, 6\)"):
        merge_pretrained(wrong_shape, saved)
    extra_layer = small_tree()
    extra_layer["params"]["body"]["fc2"] = {"kernel": np.zeros((5, 5), np.float32)}
    with pytest.raises(ConfigError, match="params/body/fc2/kernel.*missing from the checkpoint"):
        merge_pretrained(extra_layer, saved)
    fewer = small_tree()
    del fewer["params"]["body"]["fc1"]["bias"]
    with pytest.raises(ConfigError, match="params/body/fc1/bias.*not in the model"):
        merge_pretrained(fewer, saved)


def test_validate_rejects_a_missing_checkpoint_directory(tmp_path):
    config = base_config()
    config.init_checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="init_checkpoint=.*nowhere"):
        validate(config)


def test_pretrain_script_saves_a_checkpoint_the_trainer_starts_from(tmp_path, monkeypatch):
    """scripts/pretrain.py on a tiny fake CIFAR-10, then a 20-class stream initialised from its checkpoint."""
    script = load_pretrain_script()
    requested = []

    def fake_load(name, data_dir=""):
        requested.append((name, data_dir))
        return fake_cifar()

    monkeypatch.setattr(scenarios, "load_dataset", fake_load)
    out = str(tmp_path / "cifarnet_cifar10")
    params, summary = script.run("cifar10", "/data", out, epochs=2, batch_size=8, lr=0.001, log=lambda s: None)
    assert requested == [("cifar10", "/data")]
    assert len(summary["test_accuracy"]) == 2
    assert summary["train_loss"][1] < summary["train_loss"][0]  # it trained
    with open(out + ".json") as f:
        assert json.load(f)["num_classes"] == 10
    restored = restore_params(out)
    tree_equal(restored, params)

    # A 20-class stream starts from it: every body leaf from the checkpoint, the head fresh.
    config = _cifarnet_config()
    config.init_checkpoint = out
    config.strategies = "naive"
    job = StrategyJob.build(config, "naive", fake_cifar(num_classes=20))
    state = engine.unstack_member(job.program.init(jax.random.key(5)[None]))
    tree_equal(state.params["params"]["body"], restored["params"]["body"])
    assert state.params["params"]["head"]["kernel"].shape == (512, 20)

    # A model the checkpoint does not fit is refused when the job is built, before any training.
    config.model = "mlp"
    with pytest.raises(
        ConfigError, match="^init_checkpoint: the checkpoint's parameter 'params/body/conv1/bias' is not in the model$"
    ):
        StrategyJob.build(config, "naive", fake_cifar(num_classes=20))


def _cifarnet_config():
    config = base_config()
    config.model = "cifarnet"
    return config


def test_pretrain_script_refuses_an_existing_output(tmp_path):
    script = load_pretrain_script()
    with pytest.raises(FileExistsError, match="--out="):
        script.run("cifar10", "", str(tmp_path), epochs=1)
