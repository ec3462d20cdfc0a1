"""Command line: python -m cljax.main --config=configs/default.py [--config.field=value] [--workdir=DIR]."""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cljax import experiment
from cljax.config import ConfigError
from cljax.scenarios import DataError

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for results.json and reports.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep jax's backend probing out of the progress lines
    config = _CONFIG.value
    try:
        results = experiment.run_experiment(config, _WORKDIR.value)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print()
    print(experiment.comparison_table(results))
    print(f"\nresults: {_WORKDIR.value}/results.json")
    print(f"report: {_WORKDIR.value}/report/report.md")


if __name__ == "__main__":
    app.run(main)
