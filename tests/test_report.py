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
import matplotlib.colors as mcolors
import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import LogNorm
from matplotlib.text import Annotation

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
    expected = {"accuracy.png", "accuracy_matrix.png", "confusion_matrices.png", "weight_change.png", "importance.png"}
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


def test_accuracy_matrix_heatmap_is_the_mean_of_results_json(workdir):
    results = load_json(workdir / "results.json")
    for entry in results["strategies"].values():
        r = report.mean_accuracy_matrix(entry)
        runs = [np.array(run["accuracy_matrix"]) for run in entry["runs"]]
        assert r.shape == (3, 3)
        for i in range(3):
            for j in range(3):
                assert r[i, j] == pytest.approx((runs[0][i, j] + runs[1][i, j]) / 2)
        # BWT is linear in R: the mean over runs of each run's BWT is the BWT of the mean matrix.
        assert entry["summary"]["bwt_mean"] == pytest.approx(np.mean([r[-1, j] - r[j, j] for j in range(2)]))
    diverged = {"runs": [{**results["strategies"]["naive"]["runs"][0], "diverged": {"batch": 1}}]}
    assert report.mean_accuracy_matrix(diverged) is None  # diverged runs are left out, as in the tables


def test_mosaic_puts_each_block_at_its_origin_with_blank_gaps():
    blocks = [np.full((2, 3), k, np.float64) for k in range(5)] + [np.ones((1, 2))]
    image, origins = report.mosaic(blocks, cols=4)
    assert image.shape == (2 * 2 + 1, 4 * 3 + 3)
    assert origins == [(0, 0), (0, 4), (0, 8), (0, 12), (3, 0), (3, 4)]
    for block, (y, x) in zip(blocks, origins, strict=True):
        h, w = block.shape
        np.testing.assert_array_equal(image[y : y + h, x : x + w], block)
    assert np.isnan(image).sum() == image.size - sum(b.size for b in blocks)  # the rest is blank


def test_confusion_mosaic_rows_are_the_ordered_matrices(workdir):
    """The confusion picture's image: a row of blocks per strategy, block t = the stream-ordered,
    row-normalised matrix after B_t, tick labels = the class ids in stream order."""
    results = diagnostics.read_results(str(workdir))
    run = results["strategies"]["naive"]["runs"][0]
    order, boundaries = report.stream_order(run["batch_classes"], 10)
    assert list(order[:4]) == [c for batch in run["batch_classes"][:2] for c in batch]
    assert boundaries == list(np.cumsum([len(batch) for batch in run["batch_classes"]]))  # 3 x 2 of the 10 classes
    blocks = [report.ordered_confusion(cm, order) for cm in run["confusion_matrices"]]
    image, origins = report.mosaic(blocks, cols=3)
    for t, (y, x) in enumerate(origins):
        cm = np.asarray(run["confusion_matrices"][t], np.float64)
        for a, i in enumerate(order):
            np.testing.assert_allclose(image[y + a, x : x + 10], cm[i, order] / cm[i].sum())


def test_twelve_entries_get_twelve_distinct_colours_and_markers():
    names = ["naive", "cumulative", "lwf", "ewc", "si", "cwr", "cwr_plus", "ar1"]
    names += ["ewc[strength=1000]", "ewc[strength=100000]", "si[c=0.1]", "si[c=1]"]
    styles = report.strategy_styles(names)
    assert list(styles) == names
    assert len({colour for colour, _ in styles.values()}) == 12
    assert len({marker for _, marker in styles.values()}) == 12
    assert len({mcolors.to_rgb(colour) for colour, _ in styles.values()}) == 12  # real, different colours
    # A prefix keeps its styles (a strategy looks the same in a smaller job), and past 12 the pairs stay distinct.
    assert report.strategy_styles(names[:3]) == {n: styles[n] for n in names[:3]}
    many = report.strategy_styles([f"s{k}" for k in range(60)])
    assert len(set(many.values())) == 60


def test_weight_change_log_scale_shows_every_layer_that_moved(workdir):
    results = diagnostics.read_results(str(workdir))
    maps = [report.mean_weight_change(e)[1] for e in results["strategies"].values()]
    vmin, vmax = report.weight_change_range(maps)
    norm = LogNorm(vmin, vmax)
    positive = np.concatenate([m[m > 0] for m in maps])
    assert positive.size and vmin == positive.min() and vmax == positive.max()
    # Every layer that moved lands on the colour scale (none clipped to its ends or below it) ...
    for m in maps:
        shown = norm(report.log_scale_cells(m, vmin))
        assert np.all((shown[m > 0] >= 0) & (shown[m > 0] <= 1))
        assert np.all(shown[m == 0] < 0)  # ... and exact zeros fall below it: the "unchanged" colour
    # Equal ratios get equal colour steps: a layer moving 100x less than the head is half-way, not black.
    norm = LogNorm(*report.weight_change_range([np.array([[1e-2, 1e-3], [1e-4, 0.0]])]))
    np.testing.assert_allclose(norm([1e-4, 1e-3, 1e-2]), [0.0, 0.5, 1.0])
    assert report.weight_change_range([np.zeros((2, 2))])[0] > 0  # nothing moved: still a valid log scale


def test_importance_shares_are_the_histograms_first_cell(workdir):
    results = diagnostics.read_results(str(workdir))
    imp = report.mean_importance(results["strategies"]["toy"])
    shares = report.importance_shares(imp)
    num_weights = 8 * 64 + 8 + 8 * 10 + 10
    with np.load(workdir / "diagnostics_toy.npz") as npz:
        np.testing.assert_allclose(shares["F_below"], npz["importance_F"][:, :, 0].mean(axis=0) / num_weights)
        np.testing.assert_allclose(shares["F_hat_below"], npz["importance_F_hat"][:, :, 0].mean(axis=0) / num_weights)
        np.testing.assert_allclose(shares["saturated"], npz["importance_saturated"].mean(axis=0))
    # F̂ = min(F, max_F) changes no value below the first bin edge.
    np.testing.assert_allclose(shares["F_below"], shares["F_hat_below"])


def tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def test_accuracy_figure_draws_each_entry_in_its_own_style_with_a_legend(workdir):
    results = diagnostics.read_results(str(workdir))
    styles = report.strategy_styles(list(results["strategies"]))
    fig = report.accuracy_figure(results)
    fixed, expanding = fig.axes[:2]
    for ax, panel in ((fixed, "fixed"), (expanding, "expanding")):
        lines = {line.get_label().split(" (")[0]: line for line in ax.get_lines()}
        assert list(lines) == ["naive", "toy"]
        for name, line in lines.items():
            assert (line.get_color(), line.get_marker()) == styles[name]
            np.testing.assert_allclose(line.get_ydata(), report.accuracy_curves(results["strategies"][name])[panel][0])
        assert ax.get_xlabel() == "after batch"
        assert tick_texts(ax.get_xticklabels()) == ["B1", "B2", "B3"]
    assert fixed.get_ylabel().startswith("accuracy")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["naive (2 runs)", "toy (2 runs)"]


def test_accuracy_matrix_figure_shows_each_mean_matrix_with_its_values(workdir):
    results = diagnostics.read_results(str(workdir))
    fig = report.accuracy_matrix_figure(results)
    ax = fig.axes[0]
    image = np.ma.filled(ax.images[0].get_array(), np.nan)
    mats = [report.mean_accuracy_matrix(e) for e in results["strategies"].values()]
    expected, origins = report.mosaic(mats, cols=2)
    np.testing.assert_array_equal(image, expected)
    values = [t for t in ax.texts if not isinstance(t, Annotation)]  # the block titles are annotations
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in values}
    assert len(written) == len(values)
    for m, (y, x) in zip(mats, origins, strict=True):
        for (i, j), v in np.ndenumerate(m):
            assert written.get((y + i, x + j)) == (f"{v:.2f}" if v != 0 else None)
    assert tick_texts(ax.get_xticklabels()) == ["B1", "B2", "B3"] * 2
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("test classes of batch B_j", "after training on batch B_i")
    assert [a.get_text() for a in ax.texts if a.get_text().endswith("runs)")] == ["naive (2 runs)", "toy (2 runs)"]
    assert fig.axes[1].get_ylabel() == "accuracy"  # the colour bar


def test_confusion_figure_labels_every_class_in_stream_order(workdir):
    results = diagnostics.read_results(str(workdir))
    fig = report.confusion_figure(results)
    ax = fig.axes[0]
    orders = [report.stream_order(e["runs"][0]["batch_classes"], 10)[0] for e in results["strategies"].values()]
    assert tick_texts(ax.get_yticklabels()) == [str(c) for order in orders for c in order]
    assert tick_texts(ax.get_xticklabels()) == [str(c) for c in orders[-1]] * 3
    assert ax.get_xlabel() == "predicted class"
    assert "rows: true class" in fig._suptitle.get_text()
    assert {"naive", "toy", "after B1", "after B2", "after B3"} <= {t.get_text() for t in ax.texts}
    assert fig.axes[1].get_ylabel() == "fraction of the true class"


def test_weight_change_figure_uses_the_shared_log_scale(workdir):
    results = diagnostics.read_results(str(workdir))
    fig = report.weight_change_figure(results)
    ax = fig.axes[0]
    shown = ax.images[0]
    maps = [report.mean_weight_change(e)[1] for e in results["strategies"].values()]
    vmin, vmax = report.weight_change_range(maps)
    assert isinstance(shown.norm, LogNorm) and (shown.norm.vmin, shown.norm.vmax) == (vmin, vmax)
    expected, _ = report.mosaic([report.log_scale_cells(m, vmin) for m in maps], cols=2)
    np.testing.assert_array_equal(np.ma.filled(shown.get_array(), np.nan), expected)
    # Colour steps follow ratios: a layer moving k times less than the largest change sits log(k) / log(vmax / vmin)
    # below the top of the scale, not at 1 / k of it (the linear scale that showed all but the head bias black).
    toy = maps[1]
    np.testing.assert_allclose(shown.norm(toy), 1 - np.log(vmax / toy) / np.log(vmax / vmin))
    names = results["strategies"]["naive"]["runs"][0]["diagnostics"]["layers"]
    assert tick_texts(ax.get_yticklabels()) == list(names)
    assert "log" in fig.axes[1].get_ylabel()


def test_importance_figure_has_axis_labels_and_a_legend_per_strategy(workdir):
    results = diagnostics.read_results(str(workdir))
    fig = report.importance_figure(results)
    (raw, clipped), *_ = np.reshape(fig.axes, (-1, 2))
    assert raw.get_xscale() == "log" and raw.get_yscale() == "log"
    assert raw.get_ylabel().startswith("weights per bin") and raw.get_xlabel().startswith("importance value")
    assert clipped.get_xlabel().startswith("importance value")
    shares = report.importance_shares(report.mean_importance(results["strategies"]["toy"]))
    legend = clipped.get_legend()
    assert "share at max_F" in legend.get_title().get_text()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == [
        f"B{t + 1}: {shares['saturated'][t]:.2%} at max_F, {shares['F_hat_below'][t]:.1%} below" for t in range(3)
    ] + ["max_F"]
    assert [line.get_xdata()[0] for line in clipped.get_lines() if line.get_label() == "max_F"] == [MAX_F]
    assert fig.get_figwidth() > 0 and report.importance_figure({"strategies": {}}) is None


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
    for name in ("accuracy.png", "accuracy_matrix.png", "confusion_matrices.png", "weight_change.png"):
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
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        assert not (workdir / "tensorboard").exists()
        return
    results = load_json(workdir / "results.json")
    for name in ("naive", "toy"):
        for r in (0, 1):
            events = event_accumulator.EventAccumulator(str(workdir / "tensorboard" / name / f"run_{r}"))
            events.Reload()
            record = results["strategies"][name]["runs"][r]

            def curve(tag, events=events):
                return [(e.step, float(e.tensor_proto.float_val[0])) for e in events.Tensors(tag)]

            assert curve("loss") == [(i + 1, pytest.approx(v)) for i, v in enumerate(record["loss"])]
            # Down-sampled training loss: one point per batch at the optimizer steps done so far (1 epoch of
            # ceil(examples / batch size) steps per batch here).
            size = results["config"]["batch_size"]
            steps = np.cumsum([-(-n // size) for n in record["train_examples"]])
            assert list(steps) == list(np.cumsum(record["steps"]))
            assert curve("loss_by_step") == [(s, pytest.approx(v)) for s, v in zip(steps, record["loss"], strict=True)]
            # Each batch's accuracy-matrix row R[i, :]: one curve per B_j, step i.
            for j in range(3):
                column = [row[j] for row in record["accuracy_matrix"]]
                assert curve(f"accuracy_matrix/B{j + 1}") == [(i + 1, pytest.approx(v)) for i, v in enumerate(column)]


# ---- Fig. 9 left: final accuracy against memory size ----


@pytest.fixture(scope="module")
def memory_workdir(tmp_path_factory):
    """naive beside rehe on a hyper-grid of memory_size (3 sizes), 1 run, 3 batches."""
    path = tmp_path_factory.mktemp("memory_grid")
    config = tiny_config("naive,rehe", 1)
    config.grid = "rehe.memory_size=20,40,80"
    run(config, path)
    return path


def test_memory_grid_draws_fig9_left_and_the_report_embeds_it(memory_workdir):
    results = diagnostics.read_results(str(memory_workdir))
    assert list(results["strategies"]) == [
        "naive",
        "rehe[memory_size=20]",
        "rehe[memory_size=40]",
        "rehe[memory_size=80]",
    ]
    lines, flat = report.memory_lines(results)
    finals = {n: e["runs"][0]["accuracy"][-1] for n, e in results["strategies"].items()}
    assert [(size, mean) for size, mean, _ in lines["rehe"]] == [
        (size, pytest.approx(finals[f"rehe[memory_size={size:g}]"])) for size in (20.0, 40.0, 80.0)
    ]
    assert flat == {"naive": (pytest.approx(finals["naive"]), 0.0)}
    out = memory_workdir / "report"
    assert_valid_png(out / "memory.png")
    assert "memory.png" in embedded_pictures((out / "report.md").read_text())


def hand_run(run: int, r: list[list[float]]) -> dict:
    """A complete run whose accuracy after each batch is the accuracy matrix's row mean."""
    return {"run": run, "diverged": None, "accuracy": [float(np.mean(row)) for row in r], "accuracy_matrix": r}


def test_memory_lines_and_bwt_by_hand():
    """Two batches. AR1: R = [[0.9, 0], [0.5, 0.7]] and [[0.8, 0], [0.6, 0.8]]: BWT = mean(0.5 − 0.9,
    0.6 − 0.8) = −0.3 ± 0.1, final accuracy mean(0.6, 0.7) = 0.65 ± 0.05. gem at 100 and 50 patterns
    (grid entries, given out of order) and icarl at one size (a single point, no line to draw alone)."""
    ar1 = {"runs": [hand_run(0, [[0.9, 0.0], [0.5, 0.7]]), hand_run(1, [[0.8, 0.0], [0.6, 0.8]])]}
    gem = lambda m, last: {"strategy": "gem", "hparams": {"memory_size": m}, "runs": [hand_run(0, [[1, 0], last])]}
    results = {
        "config": {"icarl": {"memory_size": 30.0}, "ar1": {"strength": 1.0}},
        "strategies": {
            "ar1": ar1,
            "gem[memory_size=100]": gem(100.0, [0.8, 0.9]),
            "gem[memory_size=50]": gem(50.0, [0.6, 1.0]),
            "icarl": {"runs": [hand_run(0, [[1.0, 0.0], [0.2, 0.4]])]},
        },
    }
    lines, flat = report.memory_lines(results)
    assert lines == {
        "gem": [(50.0, 0.8, 0.0), (100.0, pytest.approx(0.85), 0.0)],
        "icarl": [(30.0, pytest.approx(0.3), 0.0)],
    }
    assert flat == {"ar1": (pytest.approx(0.65), pytest.approx(0.05))}
    assert report.memory_figure(results) is not None
    assert (
        report.memory_figure({**results, "strategies": {"ar1": ar1, "icarl": results["strategies"]["icarl"]}}) is None
    )
    header = "| strategy | complete runs |"
    row = {cells[0]: cells for cells in table_rows("\n".join(report.results_table(results)), header)}["ar1"]
    labels = [label for _, label in report.TABLE_METRICS]
    assert row[2 + labels.index("BWT")] == "-0.3000 ± 0.1000"
    assert row[2 + labels.index("final accuracy")] == "0.6500 ± 0.0500"
    assert {cells[0]: cells for cells in table_rows("\n".join(report.results_table(results)), header)}[
        "gem[memory_size=50]"
    ][2 + labels.index("BWT")] == "-0.4000 ± 0.0000"  # 0.6 − 1
