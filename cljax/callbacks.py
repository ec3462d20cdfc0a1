"""Per-batch events: the interface the built-in outputs (console, CSV, TensorBoard) use, and yours.

After each batch B_i of each run (and grid point), every callback's ``on_batch(event)`` is called
with a ``BatchEvent`` (a dict): ``strategy`` (the results entry, e.g. ``ewc`` or
``ewc[strength=1000]``), ``run``, ``batch`` (0-based i), ``num_batches``, ``accuracy`` (fixed test
set), ``seen_accuracy``, ``loss`` (mean task loss of the last epoch), ``seconds`` (training time),
``accuracy_row`` (R[i, j] for every batch j). ``close()`` is called once at the end of the job.

A logger of your own is a few lines, e.g. Weights & Biases::

    import wandb
    import cljax

    class WandbLogger(cljax.Callback):
        def __init__(self):
            self.run = wandb.init(project="cl")

        def on_batch(self, event):
            self.run.log({f"{event['strategy']}/run{event['run']}/accuracy": event["accuracy"]}, step=event["batch"])

        def close(self):
            self.run.finish()

    cljax.train("ewc", scenario, callbacks=[WandbLogger()])          # in memory
    cljax.run_experiment(config, "runs/x", callbacks=[WandbLogger()])  # the command-line job

A plain function ``fn(event)`` is accepted wherever a callback is (``as_callback``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from typing import Any

BatchEvent = dict[str, Any]
CSV_FIELDS = ("strategy", "run", "batch", "num_batches", "accuracy", "seen_accuracy", "loss", "seconds")


class Callback:
    """Base class of per-batch outputs: override ``on_batch`` (and ``close`` if it holds resources)."""

    def on_batch(self, event: BatchEvent) -> None:
        del event

    def close(self) -> None:
        pass


class FunctionCallback(Callback):
    """A plain function ``fn(event)`` as a callback."""

    def __init__(self, fn: Callable[[BatchEvent], None]):
        self.fn = fn

    def on_batch(self, event: BatchEvent) -> None:
        self.fn(event)


def as_callback(callback: Callback | Callable[[BatchEvent], None]) -> Callback:
    return callback if isinstance(callback, Callback) else FunctionCallback(callback)


def progress_line(event: BatchEvent) -> str:
    return (
        f"{event['strategy']:<11} run {event['run']} batch {event['batch'] + 1}/{event['num_batches']}: "
        f"accuracy {event['accuracy']:.3f} (seen classes {event['seen_accuracy']:.3f}) {event['seconds']:.1f}s"
    )


class ConsoleLogger(Callback):
    """One progress line per batch on stdout (the command line's output)."""

    def on_batch(self, event: BatchEvent) -> None:
        print(progress_line(event), flush=True)


class CSVLogger(Callback):
    """One row per batch (``CSV_FIELDS``) appended to ``path`` (a header when the file is new);
    flushed at once, so the file is current while the job runs."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    def on_batch(self, event: BatchEvent) -> None:
        if self._file is None:
            new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close)
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(CSV_FIELDS)
        self._writer.writerow([event[field] for field in CSV_FIELDS])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardLogger(Callback):
    """Scalars per (strategy, run) under ``logdir`` (``monitor.ScalarWriter.batch``: step = batch number);
    nothing at all when ``tensorboard`` is not installed."""

    def __init__(self, logdir: str):
        from cljax import monitor

        self.writer = monitor.tensorboard_writer(logdir)

    def on_batch(self, event: BatchEvent) -> None:
        if self.writer is not None:
            self.writer.batch(event)  # the scalars, the accuracy-matrix row and the loss by step

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CallbackList(Callback):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Iterable[Callback | Callable[[BatchEvent], None]] = ()):
        self.callbacks = [as_callback(c) for c in callbacks]

    def on_batch(self, event: BatchEvent) -> None:
        for callback in self.callbacks:
            callback.on_batch(event)

    def close(self) -> None:
        for callback in self.callbacks:
            callback.close()
