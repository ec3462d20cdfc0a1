"""Checkpoints of an experiment: after every completed batch, all a run needs to go on exactly.

Layout of a workdir::

    <workdir>/config.json           the config the workdir belongs to (written once, first)
    <workdir>/runs/chunk-<k>.json   the records of finished chunk k, written once, with their SHA-256
    <workdir>/results.json          all finished runs (rewritten after each chunk; derived from runs/)
    <workdir>/checkpoints/<step>/   one orbax step per completed batch (``ocp.args`` API):
        state/     StandardSave: the stacked states of the chunk of runs in flight: params,
                   optimizer state (anchors Θ* and importances F̂ live there), strategy state,
                   packed into one array per dtype (``pack_state``)
        progress/  JsonSave: chunk, batch, the chunk's run records so far, which of its runs
                   are alive (never the finished runs: a step's size does not grow with them)
        cljax_sha256.json  the SHA-256 of every other file of the step, written once the step is
                   complete; a step whose files do not match (or without it) is damaged

``step`` is the batch's position in the experiment (chunk index x batches + batch), so a
rerun of the same command finds the last completed batch as the newest intact step. The runs' keys
are not stored: they derive from the config's seed. The manager
keeps the ``MAX_TO_KEEP`` newest steps (disk stays bounded) plus every step named in
``keep`` (the last good checkpoint of a run that diverged).

Atomicity: orbax writes a step into a temporary directory and renames it to ``<step>``
only once every item is written (``AtomicRenameTemporaryPath``, the default of
``orbax.checkpoint.path.atomicity``: "uses an atomic rename to indicate checkpoint
completion"); a half-written step is never listed as a step, and ``cleanup_tmp_directories``
removes it at the next start. Saves are synchronous: when ``save`` returns, the step is on
disk, so the progress line printed after it never announces a checkpoint that is not there.
Damage after the save (a changed, truncated or deleted file) is caught by the checksums
(``Checkpoints.damage``); the experiment then resumes from the newest intact step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cljax.config import RESUME_IGNORED_FIELDS, ConfigError, base_config
from cljax.engine import TrainState
from cljax.files import write_json_atomic

MAX_TO_KEEP = 2
CHECKPOINTS_DIR = "checkpoints"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"  # the config the workdir's checkpoints and finished runs belong to
RUNS_DIR = "runs"  # one file per finished chunk of runs: their records, written once
MANIFEST = "cljax_sha256.json"  # inside each step: the SHA-256 of every other file of the step


class CheckpointError(ConfigError):
    """A workdir whose checkpoints cannot be used for this config (one sentence, names the way out)."""


class Checkpoints:
    """One orbax ``CheckpointManager`` over ``<workdir>/checkpoints``."""

    def __init__(self, directory: str, keep: Iterable[int] = (), writable: bool = True):
        """``writable=False`` only reads: it neither creates the directory nor cleans it."""
        self.directory = os.path.abspath(directory)
        self._keep = set(keep)
        self._writable = writable
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        policy = checkpoint_managers.AnyPreservationPolicy(
            [checkpoint_managers.LatestN(MAX_TO_KEEP), checkpoint_managers.CustomSteps(sorted(self._keep))]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=self._writable,
            create=self._writable,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: TrainState, progress: dict[str, Any]) -> None:
        """Writes ``state`` and the JSON-native ``progress`` as step ``step`` (blocking)."""
        arrays = {"packed": pack_state(state)}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), progress=ocp.args.JsonSave(progress)),
            force=True,
        )
        self._manager.wait_until_finished()
        if jax.process_index() == 0:  # the step is complete on disk: its checksums make it usable
            write_json_atomic(os.path.join(self.path(step), MANIFEST), {"sha256": file_digests(self.path(step))})

    def damage(self, step: int) -> str | None:
        """Why step ``step`` cannot be trusted (a file missing, added or changed since it was saved,
        or no checksums: the save did not finish), or None when every file is as it was written."""
        try:
            with open(os.path.join(self.path(step), MANIFEST)) as f:
                expected = json.load(f)["sha256"]
        except FileNotFoundError:
            return "it has no checksums: its save did not finish"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"its checksums cannot be read ({type(e).__name__})"
        actual = file_digests(self.path(step))
        for name in sorted(set(expected) | set(actual)):
            if name not in actual:
                return f"{name} is missing"
            if name not in expected:
                return f"{name} was not written by the save"
            if actual[name] != expected[name]:
                return f"{name} does not match its checksum"
        return None

    def newest_intact(self) -> tuple[int | None, list[tuple[int, str]]]:
        """The newest step whose files match their checksums, and the damaged steps newer than it
        (step, why), newest first."""
        damaged = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            why = self.damage(step)
            if why is None:
                return step, damaged
            damaged.append((step, why))
        return None, damaged

    def discard(self, steps: Iterable[int]) -> None:
        """Removes damaged steps (a new save of the same step must find its place free)."""
        for step in steps:
            shutil.rmtree(self.path(step), ignore_errors=True)
        self._manager.close()
        self._manager = self._open()

    def progress(self, step: int) -> dict[str, Any]:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())).progress
        except Exception as e:  # orbax raises many types; any of them means "unusable"
            raise self._unusable(step, e) from None

    def restore(self, step: int, like_state: TrainState) -> TrainState:
        """The state of step ``step``, with the tree structure, dtypes and shardings of
        ``like_state`` (a fresh one), so the compiled programs are reused as they are.

        Orbax gives back strongly typed arrays: a fresh state must not hold weakly typed
        leaves (``engine.strongly_typed``), or the step compiles once more.
        """
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore({"packed": packed_like(like_state)}))
            ).state
        except Exception as e:
            raise self._unusable(step, e) from None
        return jax.tree.map(_placed_like, unpack_state(restored["packed"], like_state), like_state)

    def keep(self, step: int) -> None:
        """Preserves ``step`` beyond ``MAX_TO_KEEP`` (the last good checkpoint of a diverged run)."""
        if step in self._keep:
            return
        self._keep.add(step)
        self._manager.close()
        self._manager = self._open()

    def close(self) -> None:
        self._manager.close()

    def _unusable(self, step: int, error: Exception) -> CheckpointError:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return CheckpointError(
            f"checkpoint {self.path(step)} cannot be restored ({detail}); delete {self.directory} to train "
            "the runs in flight again (finished runs are kept), or use a new --workdir"
        )


MEMBER_AXES = 2  # every leaf of a chunk's state is stacked [runs, grid points, ...]


def _member_axes(state: Any) -> int:
    """How many leading axes every leaf shares (2, the members'; 0 for a state without them)."""
    leaves = jax.tree.leaves(state)
    leading = {leaf.shape[:MEMBER_AXES] for leaf in leaves if leaf.ndim >= MEMBER_AXES}
    return MEMBER_AXES if len(leading) == 1 and all(leaf.ndim >= MEMBER_AXES for leaf in leaves) else 0


@jax.jit
def pack_state(state: Any) -> dict[str, jax.Array]:
    """The state as one array per dtype: each leaf flattened behind the members' axes and the
    leaves concatenated in tree order. Orbax's cost per save grows with the number of arrays: the
    default job's states (33-45 leaves) save 1.4-1.6x faster packed (BUILD_NOTES). The members'
    axes stay leading, so a state sharded over members stays sharded."""
    axes = _member_axes(state)
    groups: dict[str, list[jax.Array]] = {}
    for leaf in jax.tree.leaves(state):
        groups.setdefault(leaf.dtype.name, []).append(leaf.reshape(*leaf.shape[:axes], -1))
    return {name: jnp.concatenate(parts, axis=axes) for name, parts in groups.items()}


def packed_like(state: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """What ``pack_state(state)`` returns, as shapes, dtypes and the state's sharding."""
    shapes = jax.eval_shape(pack_state, state)
    sharding = getattr(jax.tree.leaves(state)[0], "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):  # the members' axes' partition only
        spec = tuple(sharding.spec)[: _member_axes(state)]
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return {name: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for name, s in shapes.items()}


def unpack_state(packed: dict[str, jax.Array], like: Any) -> Any:
    """The inverse of ``pack_state``: ``like``'s tree, shapes and dtypes, read back from ``packed``."""
    axes = _member_axes(like)
    leaves, treedef = jax.tree.flatten(like)
    offsets: dict[str, int] = {}
    out = []
    for leaf in leaves:
        name = leaf.dtype.name
        start, size = offsets.get(name, 0), int(np.prod(leaf.shape[axes:], dtype=np.int64))
        offsets[name] = start + size
        part = jax.lax.slice_in_dim(packed[name], start, start + size, axis=axes)
        out.append(part.reshape(leaf.shape))
    return jax.tree.unflatten(treedef, out)


def _placed_like(restored: jax.Array, fresh: jax.Array) -> jax.Array:
    """A restored leaf placed as the fresh one: on its sharding when committed (the unpacked slices
    carry the packed array's); an uncommitted copy otherwise, since jit dispatch keys on commitment too."""
    if getattr(fresh, "committed", True):
        return jax.device_put(restored, fresh.sharding)
    return jnp.asarray(np.asarray(restored))


def stored_config(workdir: str) -> tuple[dict[str, Any] | None, str] | None:
    """The config a workdir's results were made with, and the file that says so; None if it holds none.

    ``config.json`` is written before any checkpoint or finished run; results.json is read when it is
    absent. ``(None, directory)``: checkpoints or finished runs whose config nothing records.
    """
    for name in (CONFIG_FILE, RESULTS_FILE):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
                return (data if name == CONFIG_FILE else data["config"]), path
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"{path} cannot be read ({e}); rerun with --config.overwrite=True to discard the workdir's "
                    "results, or use a new --workdir"
                ) from None
    for name in (CHECKPOINTS_DIR, RUNS_DIR):
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and any(not entry.startswith(".") for entry in os.listdir(path)):
            return None, path
    return None


def file_digests(directory: str) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` (paths relative to it), the manifest aside."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative != MANIFEST:
                digests[relative] = file_sha256(path)
    return digests


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def save_finished(workdir: str, chunk: int, members: list[tuple[str, dict]]) -> None:
    """The records of a finished chunk of runs, written once: ``runs/chunk-<chunk>.json`` with
    their checksum; (results entry, record) per member."""
    rows = [{"entry": entry, "record": record} for entry, record in members]
    payload = {"chunk": chunk, "members": rows, "sha256": json_sha256(rows)}
    write_json_atomic(os.path.join(workdir, RUNS_DIR, f"chunk-{chunk}.json"), payload)


def load_finished(workdir: str) -> tuple[dict[tuple[str, int], dict], list[tuple[str, str]]]:
    """Every finished run's record by (results entry, run), and the damaged files (path, why)."""
    finished, damaged = {}, []
    directory = os.path.join(workdir, RUNS_DIR)
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    for name in [n for n in names if n.startswith("chunk-") and n.endswith(".json")]:
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                payload = json.load(f)
            rows = payload["members"]
            if json_sha256(rows) != payload["sha256"]:
                raise ValueError("it does not match its checksum")
            for row in rows:
                finished[(row["entry"], int(row["record"]["run"]))] = row["record"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            damaged.append((path, str(e) or type(e).__name__))
    return finished, damaged


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_differences(stored: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """``field: stored -> new`` for every field that differs (``RESUME_IGNORED_FIELDS`` aside).

    A field the stored config lacks counts as the field's default: the config predates the field,
    and a field is added with the default that keeps what the code did before it (e.g. ``dense_init``
    = lecun, flax's initialisation), so a workdir of an older version resumes."""
    as_json = lambda d: _flatten(json.loads(json.dumps(d)))  # tuples -> lists, as stored
    old, new = as_json(stored), as_json(config)
    old = {**{f: v for f, v in as_json(base_config().to_dict()).items() if f in new}, **old}
    return [
        f"{field}: {old.get(field, '(absent)')!r} -> {new.get(field, '(absent)')!r}"
        for field in sorted(set(old) | set(new))
        if field.split(".")[0] not in RESUME_IGNORED_FIELDS and old.get(field, ...) != new.get(field, ...)
    ]


def check_workdir(workdir: str, config) -> bool:
    """Whether the workdir's results must be discarded first: True when it holds results of another
    config and ``config.overwrite`` allows it; refuses them (``CheckpointError``) without it. Results
    of the same config resume, with or without ``overwrite``: rerunning a command always resumes.
    Reads only, writes nothing."""
    stored = stored_config(workdir)
    if stored is None:
        return False
    if stored[0] is None:
        if config.overwrite:
            return True
        raise CheckpointError(
            f"workdir {workdir!r} holds {stored[1]} but no {CONFIG_FILE} saying which config made it; "
            "rerun with --config.overwrite=True to discard it, or use a new --workdir"
        )
    differences = config_differences(stored[0], config.to_dict())
    if differences and config.overwrite:
        return True
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise CheckpointError(
            f"workdir {workdir!r} holds results of a different config ({shown}; see {stored[1]}); "
            "rerun with --config.overwrite=True to discard them, or use a new --workdir"
        )
    return False
