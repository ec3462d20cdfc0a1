"""Progress display from inside the compiled fit, and TensorBoard scalars."""

from __future__ import annotations

import io
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import engine, monitor
from cljax.config import base_config
from cljax.experiment import StrategyJob
from cljax.scenarios import build_scenario, load_dataset


@pytest.fixture(scope="module")
def setup():
    config = base_config()
    config.hidden_sizes = (16,)
    config.strategies = "naive"
    dataset = load_dataset("digits")
    job = StrategyJob.build(config, "naive", dataset)
    scenario = build_scenario(config, 0, dataset)
    state = engine.unstack_member(job.program.init(jax.random.key(0)[None]))
    state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, 0.05))
    return job, scenario, state


def training_arrays(job, scenario, i):
    x, y = scenario.training_set(i)
    return {"x": engine.pad_to(x, job.capacity), "y": engine.pad_to(y, job.capacity)}, len(y)


def test_progress_reports_a_few_times_per_batch_without_changing_results_or_recompiling(setup):
    job, scenario, state = setup
    calls = []
    program, batch_size = job.program, job.program.batch_size
    quiet = engine.make_fit(program.model.apply, program.tx, program.strategy.loss, batch_size)
    fit = engine.make_fit(
        program.model.apply,
        program.tx,
        program.strategy.loss,
        batch_size,
        progress=lambda done, total: calls.append((int(done), int(total))),
        max_traces=1,
    )
    mask = jnp.ones(scenario.num_classes, bool)
    key = jax.random.key(1)
    data, n = training_arrays(job, scenario, 0)
    quiet_state, quiet_metrics = quiet(state, data, n, 3, mask, key)
    loud_state, loud_metrics = fit(state, data, n, 3, mask, key)
    jax.tree.map(np.testing.assert_array_equal, quiet_state, loud_state)
    np.testing.assert_array_equal(quiet_metrics.loss, loud_metrics.loss)

    total = 3 * -(-n // batch_size)
    interval = -(-total // engine.PROGRESS_UPDATES)
    expected = [(d, total) for d in range(interval, total, interval)] + [(total, total)]
    assert calls == expected
    assert len(calls) <= engine.PROGRESS_UPDATES + 1

    # Another batch, other sizes and epochs: same compiled program (max_traces=1), its own totals.
    calls.clear()
    data, n = training_arrays(job, scenario, 1)
    fit(state, data, n, 1, mask, key)
    total = -(-n // batch_size)
    assert calls[-1] == (total, total)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_display_plain_lines_after_min_seconds():
    clock, out = FakeClock(), io.StringIO()
    display = monitor.ProgressDisplay(out, min_seconds=1.0, clock=clock)
    display.begin("naive run 0 batch 2/5")
    display.update(5, 20)  # within the first second: nothing
    clock.now = 2.0
    display.update(10, 20)
    display.update(7, 20)  # a late, out-of-order callback: ignored
    display.update(15, 20)
    display.update(20, 20)  # done: the batch's own result line follows
    assert out.getvalue() == "naive run 0 batch 2/5: step 10/20\nnaive run 0 batch 2/5: step 15/20\n"


def test_progress_display_rewrites_one_line_on_a_terminal():
    clock, out = FakeClock(), FakeTerminal()
    display = monitor.ProgressDisplay(out, min_seconds=0.0, clock=clock)
    display.begin("lwf run 1 batch 3/9")
    display.update(4, 8)
    display.update(8, 8)
    assert out.getvalue() == "\r\x1b[Klwf run 1 batch 3/9: step 4/8\r\x1b[K"


def test_short_fits_print_nothing():
    clock, out = FakeClock(), io.StringIO()
    display = monitor.ProgressDisplay(out, min_seconds=1.0, clock=clock)
    display.begin("x")
    for done in (1, 2, 3, 4):
        display.update(done, 4)
    assert out.getvalue() == ""


def test_no_tensorboard_means_no_writer(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "tensorboard.summary", None)
    assert monitor.tensorboard_writer(str(tmp_path)) is None


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[test]' installs it)")
    from tensorboard.backend.event_processing import event_accumulator

    writer = monitor.tensorboard_writer(str(tmp_path))
    assert writer is not None
    writer.scalars("naive", 1, 1, {"accuracy": 0.25, "loss": 2.0})
    writer.scalars("naive", 1, 2, {"accuracy": 0.5, "loss": 1.0})
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "naive" / "run_1"))
    acc.Reload()
    points = [(e.step, float(e.tensor_proto.float_val[0])) for e in acc.Tensors("accuracy")]
    assert points == [(1, 0.25), (2, 0.5)]


def test_tensorboard_batch_event_writes_its_scalars_and_accuracy_row(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[test]' installs it)")
    from tensorboard.backend.event_processing import event_accumulator

    writer = monitor.tensorboard_writer(str(tmp_path))
    rows = np.linspace(0.0, 1.0, 30).reshape(3, 10).tolist()  # 10 batches: tags B01..B10
    for i, row in enumerate(rows):
        event = {
            "strategy": "ewc[strength=1000]",
            "run": 2,
            "batch": i,
            "num_batches": 10,
            "accuracy": 0.1 * i,
            "seen_accuracy": 0.2 * i,
            "accuracy_row": row,
            "loss": 3.0 - i,
            "total_steps": 40 * (i + 1) + 100 * (i == 2),
            "seconds": 1.5,
        }
        writer.batch(event)
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "ewc[strength=1000]" / "run_2"))
    acc.Reload()

    def curve(tag):
        return [(e.step, float(e.tensor_proto.float_val[0])) for e in acc.Tensors(tag)]

    tags = acc.Tags()["tensors"]
    assert sorted(t for t in tags if t.startswith("accuracy_matrix/")) == [
        f"accuracy_matrix/B{j:02d}" for j in range(1, 11)
    ]
    for j in range(10):
        assert curve(f"accuracy_matrix/B{j + 1:02d}") == [(i + 1, pytest.approx(row[j])) for i, row in enumerate(rows)]
    assert curve("loss") == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert curve("loss_by_step") == [(40, 3.0), (80, 2.0), (220, 1.0)]  # the same loss against optimizer steps
    assert curve("seen_accuracy") == [(1, 0.0), (2, pytest.approx(0.2)), (3, pytest.approx(0.4))]
