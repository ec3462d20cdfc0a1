"""The report of section 5 from a workdir: pictures, report.md, MT vs SIT, the per-batch data behind them."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from cljax import diagnostics, engine, experiment, report
from cljax.config import base_config
from cljax.hparams import positive
from cljax.scenarios import build_scenario, load_dataset
from cljax.strategies import STRATEGIES, StrategySpec, naive

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_F = 1e-2


def toy_importance(hp):
    """Naive plus a made-up importance (F = 10·θ², F̂ = clip(F, max_F)): exercises the Fig. 4-5
    pictures with numbers known in advance."""

    def importance(state):
        f = jax.tree.map(lambda p: 10.0 * p**2, state.params["params"])
        return {"F": f, "F_hat": jax.tree.map(lambda v: jnp.minimum(v, MAX_F), f)}

    return dataclasses.replace(naive.naive(hp), name="toy", importance=importance)


TOY = StrategySpec(toy_importance, {"max_f": positive(MAX_F, "the clip of F̂")})


def tiny_config(strategies: str, num_runs: int, setting: str = "sit"):
    config = base_config()
    config.strategies = strategies
    config.num_runs = num_runs
    config.setting = setting
    config.num_batches = 3
    config.hidden_sizes = (8,)
    config.epochs_first = 1
    config.epochs = 1
    config.cumulative.epochs = 1
    return config


def run(config, workdir) -> dict:
    return experiment.run_experiment(config, str(workdir), log=lambda event: None, show_progress=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """naive + toy (with importance), 2 runs, 3 batches: the report is written by run_experiment."""
    path = tmp_path_factory.mktemp("two_strategies")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STRATEGIES, "toy", TOY)
        run(tiny_config("naive,toy", 2), path)
    return path


@pytest.fixture(scope="module")
def single_workdirs(tmp_path_factory):
    """One strategy, one run, in SIT and in MT."""
    sit, mt = tmp_path_factory.mktemp("sit"), tmp_path_factory.mktemp("mt")
    run(tiny_config("naive", 1), sit)
    run(tiny_config("naive", 1, setting="mt"), mt)
    return sit, mt


def load_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def assert_valid_png(path) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path
    assert np.ptp(image) > 0, f"{path} is blank"


def embedded_pictures(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_every_picture_is_a_valid_png_and_embedded(workdir):
    out = workdir / "report"
    expected = {"accuracy.png", "confusion_matrices.png", "weight_change.png", "importance.png"}
    assert expected <= set(os.listdir(out))
    markdown = (out / "report.md").read_text()
    assert set(embedded_pictures(markdown)) == expected
    for name in expected:
        assert_valid_png(out / name)


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_report_numbers_equal_results_json(workdir):
    results = load_json(workdir / "results.json")
    markdown = (workdir / "report" / "report.md").read_text()
    metrics = ("final_accuracy", "average_accuracy", "forgetting", "bwt")
    summary_rows = table_rows(markdown, "| strategy | complete runs |")
    assert [row[0] for row in summary_rows] == list(results["strategies"])
    for row in summary_rows:
        s = results["strategies"][row[0]]["summary"]
        assert row[1] == "2/2"
        assert row[2:] == [f"{s[m + '_mean']:.4f} ± {s[m + '_std']:.4f}" for m in metrics]
    per_run = table_rows(markdown, "| strategy | run |")
    assert len(per_run) == 4
    for row in per_run:
        s = results["strategies"][row[0]]["summary"]
        k = s["run_indices"].index(int(row[1]))
        assert row[2:] == [f"{s[m + '_per_run'][k]:.4f}" for m in metrics]
        # Per-run BWT is the mean of R[T, j] − R[j, j] over the earlier batches of that run.
        r = np.array(results["strategies"][row[0]]["runs"][k]["accuracy_matrix"])
        assert s["bwt_per_run"][k] == pytest.approx(np.mean([r[-1, j] - r[j, j] for j in range(len(r) - 1)]))
    assert json.dumps(results["config"], indent=1, sort_keys=True) in markdown


def test_results_json_stays_small_and_npz_holds_the_per_batch_arrays(workdir):
    results = load_json(workdir / "results.json")
    test_y = load_dataset("digits").test_y
    for name, entry in results["strategies"].items():
        for r in entry["runs"]:
            assert "confusion_matrices" not in r and "diagnostics" not in r
        with np.load(workdir / f"diagnostics_{name}.npz") as npz:
            cms = npz["confusion_matrices"]
            assert cms.shape == (2, 3, 10, 10)
            assert npz["weight_change"].shape == (2, 3, len(npz["layers"]))
            assert list(npz["layers"]) == ["body/fc1/bias", "body/fc1/kernel", "head/bias", "head/kernel"]
            assert ("importance_F" in npz) == (name == "toy")
            if name == "toy":
                assert npz["importance_F"].shape == (2, 3, len(diagnostics.IMPORTANCE_BIN_EDGES) + 1)
                num_weights = 8 * 64 + 8 + 8 * 10 + 10
                np.testing.assert_array_equal(npz["importance_F"].sum(axis=-1), num_weights)
                assert np.all((npz["importance_saturated"] > 0) & (npz["importance_saturated"] < 1))
        for r, record in enumerate(entry["runs"]):
            # Each stored matrix is the one the accuracies were computed from.
            np.testing.assert_allclose(np.trace(cms[r], axis1=1, axis2=2) / cms[r].sum(axis=(1, 2)), record["accuracy"])
            np.testing.assert_array_equal(cms[r].sum(axis=2), np.tile(np.bincount(test_y, minlength=10), (3, 1)))


def test_accuracy_curves_are_mean_and_std_over_runs(workdir):
    results = load_json(workdir / "results.json")
    for entry in results["strategies"].values():
        curves = report.accuracy_curves(entry)
        fixed = np.array([r["accuracy"] for r in entry["runs"]])
        seen = np.array([r["seen_accuracy"] for r in entry["runs"]])
        np.testing.assert_allclose(curves["fixed"][0], fixed.mean(axis=0))
        np.testing.assert_allclose(curves["fixed"][1], fixed.std(axis=0))
        np.testing.assert_allclose(curves["expanding"][0], seen.mean(axis=0))


def test_stream_order_follows_the_batches():
    order, boundaries = report.stream_order([[3, 1], [0, 4]], 6)
    np.testing.assert_array_equal(order, [3, 1, 0, 4, 2, 5])  # classes never trained on come last
    assert boundaries == [2, 4]
    order, boundaries = report.stream_order([[2, 0, 1], [0, 1, 2]], 3)  # NI: the same classes again
    np.testing.assert_array_equal(order, [2, 0, 1])
    assert boundaries == []


def test_ordered_confusion_puts_the_stream_order_first_and_normalises_rows():
    cm = np.arange(16).reshape(4, 4)
    order = [2, 0, 3, 1]
    out = report.ordered_confusion(cm, order)
    for a, i in enumerate(order):
        for b, j in enumerate(order):
            assert out[a, b] == pytest.approx(cm[i, j] / cm[i].sum())
    assert report.ordered_confusion(np.zeros((2, 2)), [0, 1]).sum() == 0  # empty rows stay zero


def test_weight_change_and_confusion_matrices_match_numpy():
    """Runs a stream, keeps the state after every batch, then recomputes both diagnostics with NumPy."""
    config = tiny_config("naive", 1)
    dataset = load_dataset("digits")
    scenario = build_scenario(config, 0, dataset)
    job = experiment.StrategyJob.build(config, "naive", dataset)
    chunk = experiment.Chunk((0,), (0,))
    start = experiment.start_chunk(job, chunk, [scenario])
    params = [jax.device_get(engine.unstack_member(start.states).params)]
    record = experiment.train_chunk(
        job,
        chunk,
        [scenario],
        start,
        on_checkpoint=lambda p: params.append(jax.device_get(engine.unstack_member(p.states).params)),
    ).records[0][0]
    assert len(params) == scenario.num_batches + 1
    for t, (before, after) in enumerate(zip(params, params[1:], strict=False)):
        # Naive: the evaluated params are the trained ones, and nothing happens around fit.
        flat_before = dict(jax.tree_util.tree_flatten_with_path(before["params"])[0])
        flat_after = dict(jax.tree_util.tree_flatten_with_path(after["params"])[0])
        expected = [np.mean(np.abs(flat_after[p].astype(np.float64) - flat_before[p])) for p in flat_after]
        np.testing.assert_allclose(record["diagnostics"]["weight_change"][t], expected, rtol=1e-5)
        logits = np.asarray(job.program.apply_fn(after, scenario.test_x))
        cm = np.zeros((10, 10), np.int64)
        for true, guess in zip(scenario.test_y, logits.argmax(axis=1), strict=True):
            cm[true, guess] += 1
        np.testing.assert_array_equal(record["confusion_matrices"][t], cm)


def test_one_strategy_one_run(single_workdirs):
    sit, _ = single_workdirs
    out = sit / "report"
    for name in ("accuracy.png", "confusion_matrices.png", "weight_change.png"):
        assert_valid_png(out / name)
    assert not (out / "importance.png").exists()  # naive has no importance
    markdown = (out / "report.md").read_text()
    s = load_json(sit / "results.json")["strategies"]["naive"]["summary"]
    row = table_rows(markdown, "| strategy | complete runs |")[0]
    assert row[:3] == ["naive", "1/1", f"{s['final_accuracy_mean']:.4f} ± 0.0000"]


def test_compare_mt_with_sit(single_workdirs):
    sit, mt = single_workdirs
    path = report.write_report(str(sit), compare=str(mt))
    assert_valid_png(sit / "report" / "compare.png")
    markdown = open(path).read()
    assert "compare.png" in embedded_pictures(markdown)
    rows = table_rows(markdown, "| strategy | setting |")
    assert [row[:2] for row in rows] == [["naive", "SIT"], ["naive", "MT"]]
    for row, workdir in zip(rows, (sit, mt), strict=True):
        last = load_json(workdir / "results.json")["strategies"]["naive"]["runs"][0]["accuracy_matrix"][-1]
        assert row[2:] == [f"{v:.4f}" for v in [*last, np.mean(last)]]


def test_compare_with_a_different_stream_is_refused(single_workdirs, workdir):
    sit, _ = single_workdirs
    with pytest.raises(report.ReportError, match="compare="):
        report.write_report(str(sit), compare=str(workdir / "missing"))


def test_command_line(single_workdirs, tmp_path):
    sit, _ = single_workdirs
    command = [sys.executable, "-m", "cljax.report", f"--workdir={sit}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"report: {sit}/report/report.md" in done.stdout
    empty = subprocess.run(command[:-1] + [f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2
    assert empty.stderr.startswith(f"error: workdir='{tmp_path}' has no results.json")


def test_tensorboard_directory_only_when_the_package_is_installed(workdir):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert not (workdir / "tensorboard").exists()
    else:
        for name in ("naive", "toy"):
            for r in (0, 1):
                assert any(
                    f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard" / name / f"run_{r}")
                )
