"""Atomic writes: a crash in the middle of writing never leaves a truncated results.json or a
half-written checkpoint that a restart would read."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import pytest

from cljax import checkpoint, engine, experiment


def test_crash_mid_write_leaves_the_old_results_intact(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    old = {"strategies": {"naive": {"runs": [{"accuracy": [0.5, 0.25]}]}}}
    experiment.write_json_atomic(str(path), old)
    old_text = path.read_text()

    real_dump = json.dump

    def dump_half_then_crash(payload, f, **kwargs):
        text = json.dumps(payload, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(json, "dump", dump_half_then_crash)
    new = {"strategies": {"naive": {"runs": [{"accuracy": [0.75] * 1000}]}}}
    with pytest.raises(KeyboardInterrupt):
        experiment.write_json_atomic(str(path), new)
    assert path.read_text() == old_text
    assert os.listdir(tmp_path) == ["results.json"]  # the temporary file is gone too

    monkeypatch.setattr(json, "dump", real_dump)
    experiment.write_json_atomic(str(path), new)
    assert json.loads(path.read_text()) == new


def test_write_atomic_binary(tmp_path):
    path = tmp_path / "figure.png"
    experiment.write_atomic(str(path), lambda f: f.write(b"\x89PNG..."), binary=True)
    assert path.read_bytes() == b"\x89PNG..."


def tiny_state() -> engine.TrainState:
    params = {"params": {"head": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}}
    return engine.TrainState(params, (jnp.int32(4),), ())


def test_unfinished_checkpoint_is_never_restored(tmp_path):
    """A process killed while saving step 1 leaves orbax's temporary directory, the final rename
    never done (made here by undoing that rename). A restart sees step 0 as the latest, restores
    it, and its next save replaces the leftover with a complete step 1."""
    directory = tmp_path / "checkpoints"
    checkpoints = checkpoint.Checkpoints(str(directory))
    state, key = tiny_state(), jax.random.key(0)
    checkpoints.save(0, state, key, {"batch": 0})
    checkpoints.save(1, state._replace(opt_state=(jnp.int32(5),)), key, {"batch": 1})
    checkpoints.close()
    os.rename(directory / "1", directory / "1.orbax-checkpoint-tmp")

    restarted = checkpoint.Checkpoints(str(directory))
    assert restarted.latest_step() == 0
    assert restarted.progress(0) == {"batch": 0}
    restored, restored_key = restarted.restore(0, state, key)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), restored, state))
    assert (jax.random.key_data(restored_key) == jax.random.key_data(key)).all()
    restarted.save(1, state, key, {"batch": 1, "again": True})
    restarted.close()
    assert sorted(os.listdir(directory)) == ["0", "1"]
    assert checkpoint.Checkpoints(str(directory), writable=False).progress(1) == {"batch": 1, "again": True}
