"""Command line: python -m cljax.main [--config=FILE.py] [--config.field=value] [--workdir=DIR] [--import=M] [--list].

Without --config the packaged default job runs (cljax/configs/default.py). --import=my_module (repeatable)
imports a module that registers strategies, datasets or models (cljax.registry) before the config is read;
--list prints the strategies, datasets, models and config fields with their defaults.

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

from cljax import cli, experiment, grid
from cljax.config import ConfigError, base_config, validate_distributed
from cljax.configs import DEFAULT_CONFIG
from cljax.experiment import is_primary
from cljax.scenarios import DataError
from cljax.strategies import STRATEGIES

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for results.json, checkpoints and reports.")
_IMPORT = flags.DEFINE_multi_string(
    "import", [], "Module to import first (repeatable): registers strategies/datasets/models."
)
_LIST = flags.DEFINE_bool("list", False, "Print the strategies, datasets, models and config fields, then exit.")


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
            "config",
            DEFAULT_CONFIG,
            "Experiment config file (configs/*.py[:arg]); default: the packaged default job.",
            lock_config=True,
        )
    except (AttributeError, KeyError) as e:
        fail(unknown_field(argv, e))
    except Exception as e:  # the config file is user code: any failure to load it is bad input
        fail(config_load_error(e))


def unknown_field(argv: list[str], e: Exception) -> str:
    """ml_collections raises AttributeError/KeyError("'name'") for an override of a missing field,
    and AttributeError("module ... has no attribute 'get_config'") for a file without get_config."""
    if isinstance(e, AttributeError) and str(e).startswith("module "):
        return config_load_error(e)
    return cli.unknown_field_message(argv, e, base_config())


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
    if _LIST.value:
        print(cli.listing(config))
        sys.exit(0)
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
        # Every program: most of the default job's compile in 0.3-0.7 s, under JAX's 1 s default,
        # and reading one back costs less (BUILD_NOTES, "Checkpoint saves and the compile cache").
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


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


EXIT_BAD_INPUT = 2  # bad input: one line, nothing written
EXIT_ENVIRONMENT = 1  # the machine failed the job (disk full, read-only filesystem, out of memory): one line
EXIT_DIVERGED = 3  # the job finished, but at least one run diverged (results.json records which)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def error_line(prefix: str, e: BaseException) -> str:
    return f"{prefix}: {' '.join(str(e).split())}" if str(e).strip() else f"{prefix}: {type(e).__name__}"


def run(config, workdir: str) -> int:
    """The command after flag parsing: runs (or resumes) the experiment; returns the exit code:
    0 done; 2 bad input (config, data, a workdir holding another config or in use by another job),
    before anything is written; 1 an environment failure (disk full, read-only filesystem, out of
    memory); 3 done, but some run diverged; 130 interrupted (Ctrl-C). Always one line on stderr,
    never a traceback, for these. On several hosts every process runs it; process 0 alone writes
    and prints the results."""
    try:
        use_compilation_cache(bool(config.compilation_cache))
        validate_distributed(config.distributed)
        start_distributed(config.distributed)
        results = experiment.run_experiment(config, workdir, log=experiment.print_progress if is_primary() else quiet)
    except (ConfigError, DataError) as e:
        print(error_line("error", e), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError) as e:
        print(error_line(f"error: the job stopped ({type(e).__name__})", e), file=sys.stderr)
        return EXIT_ENVIRONMENT
    except Exception as e:
        if not out_of_memory(e):
            raise  # a bug: the traceback is what finds it
        print(
            error_line("error: out of device memory; lower batch_size or eval_batch_size, or set vmap_runs=false", e),
            file=sys.stderr,
        )
        return EXIT_ENVIRONMENT
    if not is_primary():
        return 0
    print()
    print(experiment.comparison_table(results))
    print(f"\nresults: {os.path.abspath(workdir)}/results.json")
    if config.report:
        print(f"report: {os.path.abspath(workdir)}/report/report.md")
    diverged = [
        f"{name} run {record['run']}"
        for name, entry in results["strategies"].items()
        for record in entry["runs"]
        if record["diverged"]
    ]
    if diverged:
        print(f"error: {len(diverged)} run(s) diverged: {', '.join(diverged)} (see results.json)", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def out_of_memory(e: Exception) -> bool:
    """XLA's allocation failures (jax.errors.JaxRuntimeError): RESOURCE_EXHAUSTED or Out of memory."""
    text = str(e)
    return type(e).__name__.endswith("RuntimeError") and ("RESOURCE_EXHAUSTED" in text or "Out of memory" in text)


if __name__ == "__main__":
    # --config.ewc.strength=1e3,1e4: a list on a grid-able field is a hyper-grid (cljax/grid.py).
    try:  # user modules register their strategies, datasets and models before the config is read
        cli.import_user_modules(sys.argv)
    except ValueError as e:
        fail(str(e))
    sys.argv = grid.split_grid_flags(sys.argv, STRATEGIES)
    define_config_flag(sys.argv)
    app.run(main, flags_parser=parse_flags)
