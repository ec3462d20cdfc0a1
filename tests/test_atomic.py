"""Atomic writes: a crash in the middle of writing never leaves a truncated results.json or a
half-written checkpoint that a restart would read."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import pytest

from cljax import checkpoint, engine, experiment, files


def test_crash_mid_write_leaves_the_old_results_intact(tmp_path, monkeypatch):
    """A write that dies half-way (here: after half of the bytes) or after the last byte but
    before the rename leaves the old results.json as it was, and no temporary file."""
    path = tmp_path / "results.json"
    old = {"strategies": {"naive": {"runs": [{"accuracy": [0.5, 0.25]}]}}}
    experiment.write_json_atomic(str(path), old)
    old_text = path.read_text()
    new = {"strategies": {"naive": {"runs": [{"accuracy": [0.75] * 1000}]}}}

    def half_then_crash(f):
        text = json.dumps(new).encode()
        f.write(text[: len(text) // 2])
        f.flush()
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(str(path), half_then_crash, ".json")
    assert path.read_text() == old_text
    assert os.listdir(tmp_path) == ["results.json"]  # the temporary file is gone too

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)  # every byte written, then the sync before the rename fails
    with pytest.raises(OSError):
        experiment.write_json_atomic(str(path), new)
    assert path.read_text() == old_text
    assert os.listdir(tmp_path) == ["results.json"]

    monkeypatch.undo()
    experiment.write_json_atomic(str(path), new)
    assert json.loads(path.read_text()) == new


def tiny_state() -> engine.TrainState:
    params = {"params": {"head": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}}
    return engine.TrainState(params, (jnp.int32(4),), ())


def test_unfinished_checkpoint_is_never_restored(tmp_path):
    """A process killed while saving step 1 leaves orbax's temporary directory, the final rename
    never done (made here by undoing that rename). A restart sees step 0 as the latest, restores
    it, and its next save replaces the leftover with a complete step 1."""
    directory = tmp_path / "checkpoints"
    checkpoints = checkpoint.Checkpoints(str(directory))
    state = tiny_state()
    checkpoints.save(0, state, {"batch": 0})
    checkpoints.save(1, state._replace(opt_state=(jnp.int32(5),)), {"batch": 1})
    checkpoints.close()
    os.rename(directory / "1", directory / "1.orbax-checkpoint-tmp")

    restarted = checkpoint.Checkpoints(str(directory))
    assert restarted.latest_step() == 0
    assert restarted.progress(0) == {"batch": 0}
    restored = restarted.restore(0, state)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), restored, state))
    restarted.save(1, state, {"batch": 1, "again": True})
    restarted.close()
    assert sorted(os.listdir(directory)) == ["0", "1"]
    assert checkpoint.Checkpoints(str(directory), writable=False).progress(1) == {"batch": 1, "again": True}


def test_packed_state_holds_one_array_per_dtype_and_unpacks_to_the_same_leaves():
    """``pack_state`` concatenates every leaf behind the members' axes [R, G], one array per dtype;
    ``unpack_state`` gives back the tree, shapes, dtypes and bits; a tree without the members'
    axes (a scalar leaf) is packed flat."""
    key = jax.random.key(3)
    state = {
        "w": jax.random.normal(key, (2, 3, 4, 5)),
        "b": jnp.arange(2 * 3 * 7, dtype=jnp.float32).reshape(2, 3, 7),
        "count": jnp.arange(6, dtype=jnp.int32).reshape(2, 3),
        "mask": jnp.array([[True, False, True], [False, True, True]])[..., None].repeat(4, -1),
        "images": jnp.arange(2 * 3 * 2 * 2, dtype=jnp.uint8).reshape(2, 3, 2, 2),
    }
    packed = checkpoint.pack_state(state)
    assert {name: a.shape for name, a in packed.items()} == {
        "float32": (2, 3, 20 + 7),
        "int32": (2, 3, 1),
        "bool": (2, 3, 4),
        "uint8": (2, 3, 4),
    }
    assert jax.tree.map(lambda s: (s.shape, s.dtype), checkpoint.packed_like(state)) == jax.tree.map(
        lambda a: (a.shape, a.dtype), packed
    )
    member = (1, 2)  # a member's leaves, in tree order (b before w), are its slice of the packed arrays
    assert jnp.array_equal(packed["float32"][member][:7], state["b"][member])
    assert jnp.array_equal(packed["float32"][member][7:], state["w"][member].ravel())
    unpacked = checkpoint.unpack_state(packed, state)
    assert jax.tree.structure(unpacked) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(unpacked), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and jnp.array_equal(a, b)
    flat = {"step": jnp.int32(7), "w": jnp.ones((2, 3), jnp.float32)}
    assert checkpoint.pack_state(flat)["float32"].shape == (6,)
    back = checkpoint.unpack_state(checkpoint.pack_state(flat), flat)
    assert int(back["step"]) == 7 and back["step"].shape == () and jnp.array_equal(back["w"], flat["w"])


def test_a_checkpoint_of_another_layout_gives_one_sentence_that_names_the_way_out(tmp_path):
    """A step written leaf by leaf (the layout before packing) does not restore: the error names the
    checkpoints directory to delete (``overwrite=True`` would resume the same config again)."""
    import orbax.checkpoint as ocp

    directory = tmp_path / "checkpoints"
    state = tiny_state()
    old = ocp.CheckpointManager(str(directory), options=ocp.CheckpointManagerOptions(create=True))
    old.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"train_state": state})))
    old.wait_until_finished()
    old.close()
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.Checkpoints(str(directory)).restore(0, state)
    message = str(error.value)
    assert f"delete {directory}" in message and "overwrite" not in message and "\n" not in message
