"""Training a strategy from Python: ``train(strategy, scenario)`` returns the run records in memory.

    import cljax

    scenario = cljax.nc_from_arrays(train_x, train_y, test_x, test_y, classes_per_batch=2)
    records = cljax.train("ar1", scenario)                 # records[run][grid point]
    records = cljax.train("ar1", scenario, workdir="runs/mine")  # with checkpoints, results.json, report

A record is what results.json holds for one run: ``accuracy`` (after each batch, fixed test set),
``accuracy_matrix`` (R[i, j]), ``loss``, ``confusion_matrices``, ``class_order``, ... and the
``cljax.metrics`` functions summarise them (``summarize(records_of_a_point)``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from cljax import callbacks as callbacks_lib
from cljax import experiment
from cljax import grid as grid_lib
from cljax.config import base_config, strategy_grid, validate
from cljax.scenarios import Dataset, Scenario, scenario_dataset


def quiet(event: dict) -> None:
    del event


def train(
    strategy: str,
    scenario: Scenario | Sequence[Scenario] | Dataset,
    config: Any = None,
    runs: Sequence[int] | None = None,
    workdir: str | None = None,
    callbacks: Sequence[callbacks_lib.Callback | Callable[[dict], None]] = (),
    x_divisor: float = 1.0,
) -> list[list[dict]]:
    """Trains registered strategy ``strategy`` and returns its records ``[run][grid point]``.

    ``scenario``: one ``Scenario`` (every run trains on it: runs differ by their keys), one per run,
    or a ``Dataset`` that ``config`` splits (NC, class order per run). ``config`` (default
    ``base_config()``; not modified) gives the model, training fields, hyperparameters and grid;
    its ``dataset`` field is not read. ``runs``: default every run (``config.num_runs``, or one per
    given scenario). ``x_divisor``: uint8 images are seen as ``x / x_divisor``.

    Without ``workdir`` nothing is written. With one, the job is the command line's: a checkpoint
    after every batch (rerunning resumes), ``results.json``, ``batches.csv`` and ``report/``;
    ``runs`` must then be every run. ``callbacks`` get every batch's event (``cljax.callbacks``).
    """
    config = copy.deepcopy(base_config() if config is None else config)
    dataset = scenario if isinstance(scenario, Dataset) else scenario_dataset(scenario, x_divisor)
    config.strategies = strategy
    protocol_runs = dataset.protocol.num_runs if dataset.protocol is not None else None
    if protocol_runs is not None:
        config.num_runs = protocol_runs
    validate(config)
    if workdir is not None:
        if runs is not None and list(runs) != list(range(config.num_runs)):
            raise ValueError(f"runs={list(runs)}: with a workdir every run trains (0..{config.num_runs - 1})")
        results = experiment.run_experiment(
            config, workdir, log=quiet, show_progress=False, callbacks=callbacks, dataset=dataset
        )
        entries = [grid_lib.entry_name(strategy, point) for point in strategy_grid(config, strategy)]
        by_run = [{rec["run"]: rec for rec in results["strategies"][e]["runs"]} for e in entries]
        return [[records[run] for records in by_run] for run in range(config.num_runs)]
    runs = list(range(config.num_runs)) if runs is None else list(runs)
    job = experiment.StrategyJob.build(config, strategy, dataset)
    outputs = callbacks_lib.CallbackList(callbacks)
    try:
        return experiment.run_members(job, dataset, runs, on_batch=outputs.on_batch)
    finally:
        outputs.close()
