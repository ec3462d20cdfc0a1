"""Per-batch diagnostics of paper section 5, gathered after each batch, and their compact storage.

The numbers are computed on the device inside the batch's compiled program
(``cljax.stream``); after batch B_i, ``record_batch`` adds them to a run's record
(plain lists, so a checkpointed record carries them through a resume):

- the average absolute weight change per layer, mean |θ_after − θ_before| over
  each parameter leaf of the evaluated model (Fig. 13; "to avoid cancellation
  due to different sign, we compute the average of absolute values");
- for strategies with ``Strategy.importance`` (EWC, SI, AR1), histograms of F
  and F̂ in fixed log-spaced bins and the fraction of F̂ saturated at max_F
  (Fig. 4-5).

The confusion matrices (Fig. 10-12) are already in the record. Both are
computed from the weights alone: no extra pass over the training data.

``write_results`` keeps results.json small: the bulky per-batch arrays of each
strategy go to ``diagnostics_<strategy>.npz`` beside it (both written
atomically); ``read_results`` puts them back into the run records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.engine import Params
from cljax.files import write_atomic, write_json_atomic

# Record keys whose contents live in the .npz rather than in results.json.
ARRAY_KEYS = ("confusion_matrices", "diagnostics")

# Importance histogram bins: 4 per decade from 1e-15 to 1e5, the same for every
# strategy and batch so histograms compare. Counts have two extra cells: values
# below the first edge (zeros included) first, values at or above the last edge last.
IMPORTANCE_BIN_EDGES = np.logspace(-15, 5, 81)


def trainable(params: Params) -> Any:
    """The 'params' collection of a Flax variables dict (batch statistics are not weights), else ``params``."""
    return params["params"] if isinstance(params, dict) and "params" in params else params


def leaf_paths(params: Params) -> list[str]:
    """Names of the parameter leaves, e.g. 'body/fc1/kernel' (the 'params' collection prefix dropped)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(trainable(params))
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in flat]


def mean_abs_change(before: Params, after: Params) -> jax.Array:
    """Fig. 13: [L] mean |θ_after − θ_before| of every parameter leaf, in ``leaf_paths`` order."""
    pairs = zip(*map(jax.tree.leaves, (trainable(after), trainable(before))), strict=True)
    return jnp.stack([jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) for a, b in pairs])


def log_histogram(tree: Any, edges: np.ndarray = IMPORTANCE_BIN_EDGES) -> jax.Array:
    """Counts of the values of every leaf in the bins ``edges`` ([edges[k], edges[k+1]) is cell k+1),
    cell 0 = below edges[0] (zeros included), last cell = at or above edges[-1] (int32, on device)."""
    edges = jnp.asarray(edges, jnp.float32)
    counts = jnp.zeros(edges.shape[0] + 1, jnp.int32)
    for leaf in jax.tree.leaves(tree):
        cell = jnp.searchsorted(edges, leaf.reshape(-1).astype(edges.dtype), side="right")
        counts = counts + jnp.bincount(cell, length=edges.shape[0] + 1).astype(jnp.int32)
    return counts


def saturated_share(f_hat: Any, max_f: jax.Array) -> jax.Array:
    """Fraction of the F̂ values clipped to max_F (eq. 8 and 11): F̂ >= max_F."""
    leaves = jax.tree.leaves(f_hat)
    if not leaves:
        return jnp.float32(0.0)
    hits = sum(jnp.sum(leaf >= jnp.asarray(max_f, leaf.dtype)) for leaf in leaves)
    return (hits / sum(leaf.size for leaf in leaves)).astype(jnp.float32)


def record_batch(record: dict, layers: list[str], change, importance: tuple | None) -> None:
    """Appends batch B_i's weight change ([L], ``layers`` names) and, for strategies with importance,
    its histograms of F and F̂, saturated fraction and max_F to ``record['diagnostics']``."""
    diag = record.setdefault("diagnostics", {})
    diag.setdefault("layers", list(layers))
    diag.setdefault("weight_change", []).append([float(v) for v in change])
    if importance is not None:
        hist_f, hist_f_hat, saturated, max_f = importance
        for key, value in (
            ("F", [int(v) for v in hist_f]),
            ("F_hat", [int(v) for v in hist_f_hat]),
            ("saturated", float(saturated)),
            ("max_f", float(max_f)),
        ):
            diag.setdefault(f"importance_{key}", []).append(value)


# ---- Compact storage: results.json + diagnostics_<strategy>.npz ----


def diagnostics_path(workdir: str, strategy: str) -> str:
    return os.path.join(workdir, f"diagnostics_{strategy}.npz")


def _stack(per_run: Sequence[Sequence[Any]], dtype) -> np.ndarray:
    """[runs, batches, ...]: runs stopped early are zero-padded (``batches_done`` says where)."""
    arrays = [np.asarray(r, dtype) for r in per_run]
    longest = max(arrays, key=len)
    out = np.zeros((len(arrays),) + longest.shape, dtype)
    for r, a in enumerate(arrays):
        out[r, : len(a)] = a
    return out


def runs_to_arrays(runs: Sequence[dict]) -> dict[str, np.ndarray]:
    """The per-batch arrays of a strategy's run records, stacked over runs (the .npz contents)."""
    batches_done = np.array([len(r.get("confusion_matrices", [])) for r in runs], np.int64)
    arrays: dict[str, np.ndarray] = {"batches_done": batches_done}
    if batches_done.max(initial=0) == 0:
        return arrays
    arrays["confusion_matrices"] = _stack([r["confusion_matrices"] for r in runs], np.int64)
    diags = [r.get("diagnostics", {}) for r in runs]
    if all("weight_change" in d for d in diags):
        arrays["layers"] = np.array(diags[0]["layers"], dtype=str)
        arrays["weight_change"] = _stack([d["weight_change"] for d in diags], np.float64)
    if all("importance_F" in d for d in diags):
        arrays["importance_bin_edges"] = IMPORTANCE_BIN_EDGES
        arrays["importance_F"] = _stack([d["importance_F"] for d in diags], np.int64)
        arrays["importance_F_hat"] = _stack([d["importance_F_hat"] for d in diags], np.int64)
        arrays["importance_saturated"] = _stack([d["importance_saturated"] for d in diags], np.float64)
        arrays["importance_max_f"] = _stack([d["importance_max_f"] for d in diags], np.float64)
    return arrays


def arrays_to_runs(arrays: dict[str, np.ndarray], runs: Sequence[dict]) -> None:
    """Inverse of ``runs_to_arrays``: puts the per-batch lists back into the run records, in place."""
    for r, run in enumerate(runs):
        done = int(arrays["batches_done"][r])
        if "confusion_matrices" not in arrays:
            continue
        run["confusion_matrices"] = arrays["confusion_matrices"][r, :done].tolist()
        diag: dict[str, Any] = {}
        if "weight_change" in arrays:
            diag["layers"] = [str(name) for name in arrays["layers"]]
            diag["weight_change"] = arrays["weight_change"][r, :done].tolist()
        for key in ("F", "F_hat", "saturated", "max_f"):
            if f"importance_{key}" in arrays:
                diag[f"importance_{key}"] = arrays[f"importance_{key}"][r, :done].tolist()
        if diag:
            run["diagnostics"] = diag


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays), ".npz")


def write_results(workdir: str, results: dict) -> None:
    """results.json without the per-batch arrays, and one diagnostics_<strategy>.npz per strategy."""
    light: dict[str, Any] = {**results, "strategies": {}}
    for name, entry in results["strategies"].items():
        runs = entry.get("runs", [])
        if runs:
            save_npz_atomic(diagnostics_path(workdir, name), runs_to_arrays(runs))
        light["strategies"][name] = {
            **entry,
            "runs": [{k: v for k, v in run.items() if k not in ARRAY_KEYS} for run in runs],
        }
    write_json_atomic(os.path.join(workdir, "results.json"), light)


def read_results(workdir: str) -> dict:
    """results.json with each strategy's per-batch arrays (from its .npz, when present) back in the runs."""
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    for name, entry in results["strategies"].items():
        path = diagnostics_path(workdir, name)
        if os.path.exists(path):
            with np.load(path) as npz:
                arrays_to_runs(dict(npz), entry.get("runs", []))
    return results
