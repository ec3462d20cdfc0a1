"""Sweep AR1's SI strength λ and batch weights w_i (eq. 11), next to CWR+ (no SI, Θ̄ frozen after B_1).

python scripts/sweep_ar1.py --config=configs/default.py --strengths=1e-6,5e3,1.5e4,5e4,1.5e5 --w_rest=2e-4,2e-3,2e-2
python scripts/sweep_ar1.py --config=configs/fashion_mnist.py --strengths=1e-6,5e4,5e5 --w_rest=2e-2 --config.num_runs=1

Every grid point runs AR1 with the config's ``ar1`` section (``--config.ar1.<field>=...`` overrides
it; w_1 follows w_i unless ``--w_first`` is given); all points and runs train together in one
vmapped program (a hyper-grid) on the config's runs (class orders), and prints
one Markdown row: final accuracy mean ± std, average accuracy, forgetting, η·λ·max_F (stability
needs ≤ 1, eq. 7) and the fraction of Θ̄'s F̂ saturated at max_F after the last batch (too many
saturated weights freeze Θ̄, sec. 2.3). A tiny λ (1e-6; validation wants λ > 0) is the ablation
"CWR+ head, Θ̄ trained freely". ``--json`` writes every row to a file.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cljax import metrics  # noqa: E402
from cljax.config import strategy_hparams, validate  # noqa: E402
from cljax.experiment import StrategyJob, run_members  # noqa: E402
from cljax.scenarios import load_dataset  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.", lock_config=False)
_STRENGTHS = flags.DEFINE_string("strengths", "1e-6,5e3,1.5e4,5e4,1.5e5", "AR1 λ values.")
_W_REST = flags.DEFINE_string("w_rest", "2e-4,2e-3,2e-2", "AR1 w_i (i > 1) values.")
_W_FIRST = flags.DEFINE_string("w_first", "", "AR1 w_1 values; empty: w_1 = w_i.")
_JSON = flags.DEFINE_string("json", "", "Write the rows to this file.")


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def summarize_point(records: list[dict]) -> dict:
    """Summary over the runs of one point, with F̂'s saturated fraction after each run's last batch."""
    complete = [r for r in records if r["diverged"] is None]
    summary = metrics.summarize(complete) if complete else {}
    saturated = [
        r["diagnostics"]["importance_saturated"][-1]
        for r in complete
        if "importance_saturated" in r.get("diagnostics", {})
    ]
    return {**summary, "diverged_runs": len(records) - len(complete), "saturated": saturated}


def run_points(config, name: str, dataset, points: list[dict]) -> list[dict]:
    """One summary per point: every point and run trained together (a hyper-grid, cljax/grid.py)."""
    validate(config)
    job = StrategyJob.build(config, name, dataset, points=points)
    records = run_members(job, dataset, list(range(config.num_runs)))  # [run][point]
    return [summarize_point([row[p] for row in records]) for p in range(len(points))]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    warnings.simplefilter("ignore", RuntimeWarning)  # η·λ·max_F > 1 is a column of the table instead
    config = _CONFIG.value
    dataset = load_dataset(config.dataset, config.data_dir, config)

    rows = []
    print("| strategy | λ | w_1 | w_i | final accuracy | average | forgetting | η·λ·max_F | F̂ saturated |")
    print("|---|---|---|---|---|---|---|---|---|")

    def emit(row: dict) -> None:
        rows.append(row)
        s = row["summary"]
        done = "final_accuracy_mean" in s
        final = f"{s['final_accuracy_mean']:.3f} ± {s['final_accuracy_std']:.3f}" if done else "diverged"
        if done and s["diverged_runs"]:
            final += f" ({s['diverged_runs']} runs diverged)"
        rest = f"{s['average_accuracy_mean']:.3f} | {s['forgetting_mean']:.3f}" if done else "- | -"
        sat = f"{np.mean(s['saturated']):.4f}" if s["saturated"] else "-"
        print(
            f"| {row['strategy']} | {row.get('strength', '-')} | {row.get('w_first', '-')} | {row.get('w_rest', '-')} "
            f"| {final} | {rest} | {row.get('stability', '-')} | {sat} |",
            flush=True,
        )

    config.strategies = "cwr_plus"
    emit({"strategy": "cwr_plus", "summary": run_points(config, "cwr_plus", dataset, [{}])[0]})
    config.strategies = "ar1"
    points = [
        {"strength": strength, "w_first": w_first, "w_rest": w_rest}
        for w_rest in floats(_W_REST.value)
        for w_first in floats(_W_FIRST.value) or [w_rest]
        for strength in floats(_STRENGTHS.value)
    ]
    for point, summary in zip(points, run_points(config, "ar1", dataset, points), strict=True):
        hp = strategy_hparams(config, "ar1", point)
        emit({"strategy": "ar1", **point, "stability": round(hp.lr * hp.strength * hp.max_f, 3), "summary": summary})
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps({"config": config.to_dict(), "rows": rows}, indent=1))


if __name__ == "__main__":
    app.run(main)
