"""Command line: python -m cljax.main --config=configs/default.py [--config.field=value] [--workdir=DIR].

Rerunning a command on the same workdir resumes it from its last completed batch. Bad input
(flags, config values, data files, a workdir holding another config) gets one line on stderr
and exit code 2, before anything is trained or written.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from cljax import experiment, grid
from cljax.config import ConfigError, validate_distributed
from cljax.experiment import is_primary
from cljax.scenarios import DataError
from cljax.strategies import STRATEGIES

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for results.json, checkpoints and reports.")


def quiet(event: dict) -> None:
    del event  # processes other than 0 print no progress lines


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
        fail(unknown_field(argv, e))
    except Exception as e:  # the config file is user code: any failure to load it is bad input
        fail(config_load_error(e))


def unknown_field(argv: list[str], e: Exception) -> str:
    """ml_collections raises AttributeError/KeyError("'name'") for an override of a missing field."""
    name = str(e).strip("\"'")
    given = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    field = next((a for a in given if name in a[len("--config.") :].split(".")), given[0] if given else "--config")
    return f"{field}: the config has no field {name!r}; the fields and their defaults are in cljax/config.py"


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
    except (AttributeError, KeyError) as e:  # after an explicit --config=<file>: an unknown override
        fail(unknown_field(argv, e))
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
    sys.exit(run(config, _WORKDIR.value))


def compilation_cache_dir() -> str:
    """Where compiled programs are kept between runs: $CLJAX_CACHE_DIR, else the user cache dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("CLJAX_CACHE_DIR") or os.path.join(base, "cljax", "xla")


def use_compilation_cache(enabled: bool) -> None:
    """JAX's persistent compilation cache: a rerun (or another job with the same programs) loads
    the compiled programs instead of compiling them again; results are the same either way."""
    if enabled:
        jax.config.update("jax_compilation_cache_dir", compilation_cache_dir())
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


CLUSTER_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # processes of a launched job


def cluster_detected() -> bool:
    """A multi-process job launched by a cluster manager (SLURM, Open MPI, MPICH) or on a TPU pod slice:
    ``jax.distributed.initialize()`` then finds the coordinator by itself."""
    sizes = [os.environ.get(name, "1") for name in CLUSTER_VARIABLES]
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return any(size.isdigit() and int(size) > 1 for size in sizes) or "," in tpu_hosts


def start_distributed(distributed) -> None:
    """Several hosts: ``jax.distributed.initialize`` with the config's coordinator, number of processes
    and process id, or with the cluster's own (``cluster_detected``); one host: nothing to do."""
    if distributed.coordinator:
        jax.distributed.initialize(
            coordinator_address=distributed.coordinator,
            num_processes=distributed.num_processes,
            process_id=distributed.process_id,
        )
    elif cluster_detected():
        jax.distributed.initialize()


def run(config, workdir: str) -> int:
    """The command after flag parsing: runs (or resumes) the experiment; returns the exit code,
    2 after one line on stderr for bad input (config, data, a workdir holding another config).
    On several hosts every process runs it; process 0 alone writes and prints the results."""
    use_compilation_cache(bool(config.compilation_cache))
    try:
        validate_distributed(config.distributed)
        start_distributed(config.distributed)
        results = experiment.run_experiment(config, workdir, log=experiment.print_progress if is_primary() else quiet)
    except (ConfigError, DataError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not is_primary():
        return 0
    print()
    print(experiment.comparison_table(results))
    print(f"\nresults: {workdir}/results.json")
    print(f"report: {workdir}/report/report.md")
    return 0


if __name__ == "__main__":
    # --config.ewc.strength=1e3,1e4: a list on a grid-able field is a hyper-grid (cljax/grid.py).
    sys.argv = grid.split_grid_flags(sys.argv, STRATEGIES)
    define_config_flag(sys.argv)
    app.run(main, flags_parser=parse_flags)
