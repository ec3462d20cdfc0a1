"""Live monitoring of an experiment: a progress line during long batches, TensorBoard scalars.

``ProgressDisplay.update`` is the ``progress`` callback of ``engine.make_fit``:
the compiled fit calls it a few times per batch (steps done / total). On a
terminal it rewrites one line in place; otherwise it prints plain lines. Fits
shorter than ``min_seconds`` print nothing, so small jobs keep a clean log.

``tensorboard_writer(logdir)`` returns a ``ScalarWriter`` when the
``tensorboard`` package is importable (its framework-free
``tensorboard.summary.Writer``; TensorFlow is not needed) and None otherwise.
``ScalarWriter.batch(event)`` takes the per-batch event of
``experiment.run_experiment`` (step = batch number): accuracy on the fixed and
expanding test sets, the fit's loss (mean over the batch's last epoch: one point
per batch of the training loss), the seconds, and the accuracy-matrix row
R[i, :] as one curve per B_j (``accuracy_matrix/B<j>``); and ``loss_by_step``: the
same loss at step = optimizer steps so far (``total_steps``), the training loss curve
down-sampled to one point per batch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any


class ProgressDisplay:
    """Steps done / total of the batch being trained, a few times per batch (not per step)."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        min_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stdout
        self.min_seconds = min_seconds
        self.clock = clock
        self.in_place = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = ""
        self.started = clock()
        self.shown = False
        self.last_done = -1

    def begin(self, label: str) -> None:
        """A new fit starts (called on the host before ``fit``)."""
        self.label, self.started, self.shown, self.last_done = label, self.clock(), False, -1

    def update(self, done: Any, total: Any) -> None:
        """Called from inside the compiled fit; unordered callbacks may arrive late, so keep the max."""
        done, total = int(done), int(total)
        if done <= self.last_done:
            return
        self.last_done = done
        finished = done >= total
        if self.clock() - self.started < self.min_seconds and not self.shown:
            return
        if self.in_place:
            # Finished: clear the line so the batch's result line prints clean.
            text = "" if finished else f"{self.label}: step {done}/{total}"
            self.stream.write(f"\r\x1b[K{text}")
        elif not finished:  # the batch's result line follows the last step anyway
            self.stream.write(f"{self.label}: step {done}/{total}\n")
        self.stream.flush()
        self.shown = True


# Scalars of a batch event written as they are (accuracy on the fixed and expanding test sets, the
# fit's loss: mean task loss of the batch's last epoch, training seconds).
BATCH_SCALARS = ("accuracy", "seen_accuracy", "loss", "seconds")


class ScalarWriter:
    """One TensorBoard event directory per (strategy, run): <logdir>/<strategy>/run_<r>."""

    def __init__(self, logdir: str, writer_cls: Any):
        self.logdir = logdir
        self.writer_cls = writer_cls
        self.writers: dict[tuple[str, int], Any] = {}

    def scalars(self, strategy: str, run: int, step: int, values: dict[str, float]) -> None:
        key = (strategy, run)
        if key not in self.writers:
            self.writers[key] = self.writer_cls(os.path.join(self.logdir, strategy, f"run_{run}"))
        writer = self.writers[key]
        for tag, value in values.items():
            writer.add_scalar(tag, float(value), step=step)
        writer.flush()

    def batch(self, event: dict[str, Any]) -> None:
        """One batch's event: its scalars and its accuracy-matrix row at step = batch number (1-based)."""
        values = {tag: event[tag] for tag in BATCH_SCALARS}
        row = event["accuracy_row"]
        width = len(str(len(row)))  # B01..B10 sort in batch order in TensorBoard's tag list
        values.update({f"accuracy_matrix/B{j + 1:0{width}d}": r for j, r in enumerate(row)})
        self.scalars(event["strategy"], event["run"], event["batch"] + 1, values)
        # The training loss against optimizer steps, down-sampled to one point per batch (the mean of its
        # last epoch): Cumulative's long batches and the short ones of the others on one step axis.
        self.scalars(event["strategy"], event["run"], event["total_steps"], {"loss_by_step": event["loss"]})

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def tensorboard_writer(logdir: str) -> ScalarWriter | None:
    """A ScalarWriter under ``logdir`` if ``tensorboard`` is importable, else None (no error, no output)."""
    try:
        from tensorboard.summary import Writer
    except ImportError:
        return None
    return ScalarWriter(logdir, Writer)
