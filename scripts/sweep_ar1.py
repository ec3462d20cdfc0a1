"""Sweep AR1's SI strength λ and batch weights w_i (eq. 11), with CWR+ (no SI, Θ̄ frozen) as the reference.

python scripts/sweep_ar1.py --dataset=digits --strengths=0,3,10,30,100 --w_rest=0.1,1,10 --runs=3
python scripts/sweep_ar1.py --dataset=fashion_mnist --strengths=0,10,100 --w_rest=1 --set=epochs=2 --set=lr=0.01

Every grid point runs AR1 with the ``ar1`` section of ``cljax.config.base_config()`` (plus ``--set``
overrides) on the same runs (class orders) and prints one Markdown row: final accuracy mean ± std,
average accuracy, forgetting, η·λ·max_F (stability needs ≤ 1, eq. 7) and the fraction of Θ̄'s F̂
saturated at max_F after the last batch (too many saturated weights freeze Θ̄, PAPER_NOTES). λ = 0
is the ablation "CWR+ head, Θ̄ trained freely". ``--json`` writes every row to a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cljax import metrics  # noqa: E402
from cljax.config import base_config, strategy_hparams, validate  # noqa: E402
from cljax.experiment import Trainer  # noqa: E402
from cljax.scenarios import build_scenario, load_dataset  # noqa: E402


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_point(config, name: str, dataset) -> dict:
    """All runs of one strategy; returns the summary plus F̂ saturation (AR1) after the last batch."""
    validate(config)
    trainer = Trainer.build(config, name, dataset)
    strategy = trainer.strategy
    saturated: list[float] = []

    def after_batch(state, ctx):
        state = strategy.after_batch(state, ctx)
        if strategy.importance is not None and ctx.index == len(scenario.batches) - 1:
            report = strategy.importance(state)
            f_hat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(report["F_hat"])])
            saturated.append(float(np.mean(f_hat >= report["max_f"])))
        return state

    trainer = dataclasses.replace(trainer, strategy=dataclasses.replace(strategy, after_batch=after_batch))
    runs = []
    for run in range(config.num_runs):
        scenario = build_scenario(config, run, dataset)
        key = jax.random.fold_in(jax.random.key(config.seed), run)
        runs.append(trainer.run_stream(scenario, run, key))
    complete = [r for r in runs if r["diverged"] is None]
    summary = metrics.summarize(complete) if complete else {}
    return {**summary, "diverged_runs": len(runs) - len(complete), "saturated": saturated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--strengths", type=floats, default=floats("0,3,10,30,100"), help="λ values")
    parser.add_argument("--w_first", type=floats, default=None, help="w_1 values (default: the config's)")
    parser.add_argument("--w_rest", type=floats, default=floats("0.1,1,10"), help="w_i (i > 1) values")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="ar1 (and cwr_plus) field=value, e.g. lr=0.01")
    parser.add_argument("--json", default="", help="write the rows to this file")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # η·λ·max_F > 1 is a column of the table instead

    config = base_config()
    config.dataset = args.dataset
    config.num_runs = args.runs
    for item in args.set:
        field, value = item.split("=", 1)
        config.ar1[field] = parse_value(value)
        if field in config.cwr_plus:
            config.cwr_plus[field] = parse_value(value)
    dataset = load_dataset(config.dataset, config.data_dir)

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
    emit({"strategy": "cwr_plus", "summary": run_point(config, "cwr_plus", dataset)})
    config.strategies = "ar1"
    for w_first in args.w_first or [config.ar1.w_first]:
        for w_rest in args.w_rest:
            for strength in args.strengths:
                config.ar1.update(strength=strength, w_first=w_first, w_rest=w_rest)
                hp = strategy_hparams(config, "ar1")
                stability = round(hp.lr * strength * hp.max_f, 3)
                summary = run_point(config, "ar1", dataset)
                emit(
                    {
                        "strategy": "ar1",
                        "strength": strength,
                        "w_first": w_first,
                        "w_rest": w_rest,
                        "stability": stability,
                        "summary": summary,
                    }
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config.to_dict(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
