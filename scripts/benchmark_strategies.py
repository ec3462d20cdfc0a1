"""Training seconds per strategy on one protocol, side by side in one process.

    python scripts/benchmark_strategies.py                                   # rehearsal protocol, split Fashion-MNIST
    python scripts/benchmark_strategies.py --config=configs/rehearsal.py:digits --strategies=naive,gem

For each strategy, one run (run 0) of the config's stream is trained twice with the same program:
the first pass compiles (its seconds include compilation), the second is the steady state. A
pass's seconds are the sum over the batches of ``train_seconds`` (``begin``, fit and
``after_batch``, until the states are ready; evaluation is not counted). Prints one line per
strategy and each strategy's steady-state ratio to Naive's.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cljax import experiment  # noqa: E402
from cljax.scenarios import load_dataset  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/rehearsal.py:fashion_mnist", "Config (training protocol, dataset).", lock_config=False
)
_STRATEGIES = flags.DEFINE_list("strategies", ["naive", "rehe", "gem", "icarl"], "strategies, in this order")


def train_seconds(job, dataset) -> float:
    (record,) = experiment.run_stream(job, dataset, runs=[0])
    return float(sum(record["train_seconds"]))


def main(argv):
    del argv
    config = _CONFIG.value
    config.num_runs = 1
    dataset = load_dataset(config.dataset, config.data_dir, config)
    print(f"{config.dataset}: one run, {config.num_batches or 'all'} batches, mini-batch {config.batch_size}")
    print(f"{'strategy':<10}{'first pass (compiles) s':>26}{'steady s':>12}{'vs naive':>10}")
    steady = {}
    for name in _STRATEGIES.value:
        job = experiment.StrategyJob.build(config, name, dataset)
        first = train_seconds(job, dataset)
        steady[name] = train_seconds(job, dataset)
        ratio = steady[name] / steady[_STRATEGIES.value[0]]
        print(f"{name:<10}{first:>26.1f}{steady[name]:>12.1f}{ratio:>10.2f}", flush=True)


if __name__ == "__main__":
    app.run(main)
