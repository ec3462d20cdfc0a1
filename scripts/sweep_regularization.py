"""Strength sweep for LwF, EWC and SI, tuned on run 0 as the paper did (App. C-D), then frozen.

For each strategy, every point of its grid trains run 0 of the stream (natural class
order), all points together in one vmapped program (a hyper-grid; the points are given
explicitly since λ is tied to η and max_F), and records the final accuracy; the best point is then run on all
``num_runs`` runs next to Naive, with the values frozen. The grids follow the
paper's knobs: LwF's ``map`` target interval; EWC's λ and max_F and the learning
rate of B_i>1 (Table 4: λ set near 1/(η·max_F)); SI's λ, max_F, w_1, w_i and the
learning rate of B_i>1. λ is given as k/(η·max_F), k the stability factor of eq. 7.

python scripts/sweep_regularization.py --config=configs/default.py --workdir=/tmp/sweep_digits_sit
python scripts/sweep_regularization.py --config=configs/default.py --config.setting=mt --workdir=/tmp/sweep_digits_mt
python scripts/sweep_regularization.py --config=configs/fashion_mnist.py --workdir=/tmp/sweep_fmnist_sit

Prints one line per grid point; writes ``<workdir>/sweep.json`` and the tables ``<workdir>/sweep.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cljax import metrics  # noqa: E402
from cljax.config import strategy_hparams  # noqa: E402
from cljax.experiment import StrategyJob, prepare, run_members, write_json_atomic  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/sweep_regularization", "Where sweep.json goes.")
_STRATEGIES = flags.DEFINE_string("strategies", "lwf,ewc,si", "Strategies to sweep (lwf, ewc, si).")
_GRID = flags.DEFINE_string("grid", "", 'JSON replacing grids, e.g. \'{"si": {"w_rest": [0.001, 0.01]}}\'.')
_CONFIRM = flags.DEFINE_bool("confirm", True, "Run the best point of each strategy on all num_runs runs.")

# Stability factors k = η·λ·max_F (eq. 7); λ = k / (η·max_F).
DIGITS_GRIDS: dict[str, dict[str, list[Any]]] = {
    "lwf": {
        # 1 − n_i/Σn_j over 5 equal batches is 1/2, 2/3, 3/4, 4/5; Table 4 maps [0.66, 0.9].
        "map_from": [(0.5, 0.8), (0.66, 0.9)],
        "map_to": [(0.3, 0.7), (0.45, 0.85), (0.6, 0.9), (0.75, 0.95)],
        "lr": [0.05, 0.01],
    },
    "ewc": {
        "max_f": [1e-4, 1e-3, 1e-2],
        "k": [0.5, 1.0],
        "lr": [0.02, 0.005],
        "epochs": [1, 5],
    },
    "si": {
        "max_f": [1e-3],  # Tables 4-5 use 0.001 throughout
        "k": [1.0],
        "w_first": [1e-4, 1e-3, 1e-2],
        "w_rest": [1e-4, 1e-3, 1e-2],
        "lr": [0.02, 0.005],
        "epochs": [5],
    },
}
# Fashion-MNIST batches hold ~12,000 patterns (digits: ~360), so one epoch is already ~190
# steps: the digits grids' 5-epoch points over-train B_i>1 there (first sweep, BUILD_NOTES.md);
# this grid keeps one epoch and lowers the learning rate instead.
FASHION_MNIST_GRIDS: dict[str, dict[str, list[Any]]] = {
    "lwf": DIGITS_GRIDS["lwf"],
    "ewc": {
        "max_f": [1e-5, 1e-4, 1e-3],
        "k": [1.0],
        "lr": [0.005, 0.002, 0.001],
        "epochs": [1],
    },
    "si": {
        "max_f": [1e-3],
        "k": [1.0],
        "w_first": [1e-5, 1e-4, 1e-3],
        "w_rest": [1e-4, 1e-3, 1e-2],
        "lr": [0.005, 0.001],
        "epochs": [1],
    },
}
GRIDS = {"digits": DIGITS_GRIDS, "fashion_mnist": FASHION_MNIST_GRIDS}
TRAINING_POINT_FIELDS = ("lr", "epochs", "lr_first", "epochs_first")  # also given to the Naive control


def traced_point(config, name: str, point: dict[str, Any]) -> dict[str, Any]:
    """A sweep point as the values a job trains with (k becomes the strength λ = k/(η·max_F))."""
    values = {field: value for field, value in point.items() if field != "k"}
    if "k" in point:
        hp = strategy_hparams(config, name, values)
        values["strength"] = float(point["k"] / (hp.lr * hp.max_f))
    return values


def run_points(config, name: str, dataset, points: list[dict[str, Any]], runs) -> list[list[dict]]:
    """Records [run][point]: every point and run in one vmapped program (a hyper-grid, cljax/grid.py)."""
    job = StrategyJob.build(config, name, dataset, points=[traced_point(config, name, p) for p in points])
    return run_members(job, dataset, list(runs))


def final_accuracy(record: dict) -> float:
    return record["accuracy"][-1] if record["diverged"] is None else float("nan")


def markdown(report: dict[str, Any]) -> str:
    """The sweep as markdown tables: one row per grid point (run 0), then the frozen values on all runs."""
    lines = [f"Naive, run 0: final accuracy {report['naive_run0']:.3f}", ""]
    for name, sweep in report["sweeps"].items():
        fields = list(sweep["points"][0]["point"])
        lines += [f"**{name}** (run 0)", "", "| " + " | ".join(fields) + " | final accuracy |"]
        lines.append("|" + "---|" * (len(fields) + 1))
        for p in sweep["points"]:
            cells = [str(list(v)) if isinstance(v, list | tuple) else f"{v:g}" for v in p["point"].values()]
            mark = " **best**" if p["point"] == sweep["best"]["point"] else ""
            lines.append("| " + " | ".join(cells) + f" | {p['final_accuracy']:.3f}{mark} |")
        lines.append("")
        confirmed = report["confirmed"].get(name)
        if confirmed and "final_accuracy_mean" in confirmed:
            control = confirmed["naive_same_training"]
            strength = f", λ = {confirmed['strength']:g}" if confirmed.get("strength") else ""
            lines += [
                f"Frozen{strength}, all runs: {confirmed['final_accuracy_mean']:.3f} ± "
                f"{confirmed['final_accuracy_std']:.3f}; Naive with the same lr/epochs: "
                f"{control['final_accuracy_mean']:.3f} ± {control['final_accuracy_std']:.3f}",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    warnings.simplefilter("ignore", RuntimeWarning)  # k > 1 points warn by design
    base = _CONFIG.value
    os.makedirs(_WORKDIR.value, exist_ok=True)
    dataset, _ = prepare(base)
    names = [n.strip() for n in _STRATEGIES.value.split(",") if n.strip()]
    report: dict[str, Any] = {"config": base.to_dict(), "sweeps": {}, "confirmed": {}}
    naive = run_points(base, "naive", dataset, [{}], [0])[0][0]
    print(f"naive run 0: final accuracy {final_accuracy(naive):.3f}", flush=True)
    report["naive_run0"] = final_accuracy(naive)
    path = os.path.join(_WORKDIR.value, "sweep.json")
    grids = {**GRIDS.get(base.dataset, DIGITS_GRIDS), **(json.loads(_GRID.value) if _GRID.value else {})}
    for name in names:
        grid = {
            field: [tuple(v) if isinstance(v, list) else v for v in values] for field, values in grids[name].items()
        }
        grid_points = [dict(zip(grid.keys(), values, strict=True)) for values in itertools.product(*grid.values())]
        points = []
        for point, record in zip(grid_points, run_points(base, name, dataset, grid_points, [0])[0], strict=True):
            acc = final_accuracy(record)
            points.append({"point": point, "final_accuracy": acc, "accuracy": record["accuracy"]})
            print(f"{name} {point}: final {acc:.3f} per batch {np.round(record['accuracy'], 3).tolist()}", flush=True)
        best = max(points, key=lambda p: -1.0 if np.isnan(p["final_accuracy"]) else p["final_accuracy"])
        report["sweeps"][name] = {"points": points, "best": best}
        print(f"{name} best on run 0: {best['point']} -> {best['final_accuracy']:.3f}", flush=True)
        if _CONFIRM.value:
            runs = range(base.num_runs)
            records = [row[0] for row in run_points(base, name, dataset, [best["point"]], runs)]
            complete = [r for r in records if r["diverged"] is None]
            summary = metrics.summarize(complete) if complete else None
            # Control: Naive with the same training fields (learning rate, epochs) on the same runs.
            training = {k: v for k, v in best["point"].items() if k in TRAINING_POINT_FIELDS}
            control = metrics.summarize([row[0] for row in run_points(base, "naive", dataset, [training], runs)])
            report["confirmed"][name] = {
                "naive_same_training": control,
                "point": best["point"],
                "strength": traced_point(base, name, best["point"]).get("strength"),
                **(summary or {}),
            }
            if summary:
                print(
                    f"{name} frozen on {len(complete)}/{base.num_runs} runs: "
                    f"{summary['final_accuracy_mean']:.3f} ± {summary['final_accuracy_std']:.3f}; Naive with the "
                    f"same lr/epochs: {control['final_accuracy_mean']:.3f} ± {control['final_accuracy_std']:.3f}",
                    flush=True,
                )
        write_json_atomic(path, report)
    with open(os.path.join(_WORKDIR.value, "sweep.md"), "w") as f:
        f.write(markdown(report))
    print(f"\nsweep: {path} and sweep.md")


if __name__ == "__main__":
    app.run(main)
