"""Command line: python -m cljax.main --config=configs/default.py [--config.field=value] [--workdir=DIR]."""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cljax import experiment
from cljax.config import ConfigError
from cljax.scenarios import DataError

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for results.json and reports.")


def fail(message: str) -> None:
    """One line on stderr, exit code 2, no traceback: the contract for bad input."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def define_config_flag(argv: list[str]):
    """ml_collections loads the config file and scans argv for --config.x overrides as soon as
    the flag is defined: unknown fields and missing files are reported here, in one line."""
    try:
        return config_flags.DEFINE_config_file(
            "config", "configs/default.py", "Experiment config file (configs/*.py[:arg]).", lock_config=True
        )
    except (AttributeError, KeyError) as e:
        field = next((a.split("=")[0] for a in argv if a.startswith("--config.")), "--config.<field>")
        fail(f"{field}: {e} is not a config field; the fields and their defaults are in cljax/config.py")
    except Exception as e:  # the config file is user code: any failure to load it is bad input
        fail(config_load_error(e))


def config_load_error(e: Exception) -> str:
    cause = e.__cause__ or e
    return f"--config: the config file could not be loaded: {type(cause).__name__}: {' '.join(str(cause).split())}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with bad flag values turned into one clear line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        fail(" ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines))  # first line + the cause
    except Exception as e:  # --config=<file> is loaded while parsing; it is user code
        fail(config_load_error(e))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep jax's backend probing out of the progress lines
    try:
        config = flags.FLAGS.config
        config.keys()  # the file is loaded lazily: load it now, to report a broken one as bad input
    except Exception as e:
        fail(config_load_error(e))
    try:
        results = experiment.run_experiment(config, _WORKDIR.value)
    except (ConfigError, DataError) as e:
        fail(str(e))
    print()
    print(experiment.comparison_table(results))
    print(f"\nresults: {_WORKDIR.value}/results.json")
    print(f"report: {_WORKDIR.value}/report/report.md")


if __name__ == "__main__":
    define_config_flag(sys.argv)
    app.run(main, flags_parser=parse_flags)
