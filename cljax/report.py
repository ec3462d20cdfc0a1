"""Pictures and tables of paper section 5 from a workdir: ``<workdir>/report/``.

    python -m cljax.report --workdir=runs/default
    python -m cljax.report --workdir=runs/sit --compare=runs/mt   # adds MT vs SIT (Fig. 3)

Reads ``results.json`` and the per-batch diagnostics beside it
(``diagnostics_<strategy>.npz``, see ``cljax.diagnostics``) and writes:

- ``accuracy.png``: accuracy after each batch, mean over the complete runs with
  a ±1 std band, on the fixed test set (all classes) and on the expanding one
  (classes seen so far) (Fig. 7-8);
- ``confusion_matrices.png``: the confusion matrix after each batch, one row per
  strategy, run 0, rows and columns in stream order (from the batches' classes) so that classes
  of B_1 come first (Fig. 10-12); each row (true class) normalised to 1;
- ``weight_change.png``: mean |Δθ| per layer and batch, one heatmap per
  strategy, mean over the complete runs, one colour scale for all (Fig. 13);
- ``importance.png``: for strategies exposing ``Strategy.importance`` (EWC, SI,
  AR1), the distribution of F and F̂ after each batch on log axes, mean counts
  over the complete runs, with the fraction of F̂ saturated at max_F (Fig. 4-5);
- ``compare.png`` (with ``--compare``): accuracy on each batch's classes after
  the last batch and their average, for the two workdirs (Fig. 3: MT vs SIT);
- ``report.md``: the results table (from results.json), a table per hyper-grid (best final
  accuracy in bold), per-run values, the configuration, and the pictures.

Pictures are drawn with matplotlib's object-oriented API on the Agg canvas
(no pyplot, no global backend switch) and written atomically.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from cljax import diagnostics, metrics
from cljax.files import write_atomic, write_text_atomic

REPORT_DIR = "report"
TABLE_METRICS = (
    ("final_accuracy", "final accuracy"),
    ("average_accuracy", "average accuracy"),
    ("forgetting", "forgetting"),
    ("bwt", "BWT"),
)


class ReportError(ValueError):
    """A workdir that cannot be reported on (one sentence naming the path and the problem)."""


# ---- Numbers behind the pictures (pure, tested against results.json) ----


def complete_runs(entry: dict) -> list[dict]:
    return [run for run in entry.get("runs", []) if run.get("diverged") is None]


def summary_of(entry: dict) -> dict[str, Any] | None:
    """The strategy's results.json summary; keys an older results.json lacks are recomputed from its runs."""
    runs = complete_runs(entry)
    if not runs:
        return None
    return {**metrics.summarize(runs), **(entry.get("summary") or {})}


def accuracy_curves(entry: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'fixed': (mean, std), 'expanding': (mean, std)} over the complete runs, one value per batch."""
    runs = complete_runs(entry)
    curves = {}
    for name, key in (("fixed", "accuracy"), ("expanding", "seen_accuracy")):
        values = np.array([run[key] for run in runs], np.float64)
        curves[name] = (values.mean(axis=0), values.std(axis=0))
    return curves


def stream_order(batch_classes: Sequence[Sequence[int]], num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Class ids in the order the stream introduces them (classes never trained on last), and how many
    classes are known after each batch that adds some (where the pictures draw batch boundaries).
    Built from the batches' classes, so it also holds for NI streams and re-labelled runs."""
    order: list[int] = []
    boundaries: list[int] = []
    for classes in batch_classes:
        new = [int(c) for c in classes if c not in order]
        order.extend(new)
        if new:
            boundaries.append(len(order))
    order.extend(c for c in range(num_classes) if c not in order)
    return np.asarray(order), boundaries[:-1] if boundaries and boundaries[-1] == num_classes else boundaries


def ordered_confusion(cm: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Rows and columns in ``order`` (``stream_order``: B_1's classes first), each true-class row summing to 1."""
    order = np.asarray(order)
    cm = np.asarray(cm, np.float64)[np.ix_(order, order)]
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)


def mean_weight_change(entry: dict) -> tuple[list[str], np.ndarray] | None:
    """(layer names, [layers, batches] mean |Δθ| over the complete runs), or None without diagnostics."""
    runs = [run for run in complete_runs(entry) if "weight_change" in run.get("diagnostics", {})]
    if not runs:
        return None
    values = np.mean([np.asarray(run["diagnostics"]["weight_change"], np.float64) for run in runs], axis=0)
    return runs[0]["diagnostics"]["layers"], values.T


def mean_importance(entry: dict) -> dict[str, np.ndarray] | None:
    """Mean over the complete runs of the importance histograms [batches, cells], saturation and max_F."""
    runs = [run for run in complete_runs(entry) if "importance_F" in run.get("diagnostics", {})]
    if not runs:
        return None
    return {
        key: np.mean([np.asarray(run["diagnostics"][f"importance_{key}"], np.float64) for run in runs], axis=0)
        for key in ("F", "F_hat", "saturated", "max_f")
    }


def last_batch_accuracies(entry: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Fig. 3: accuracy on each batch's classes after the last batch, then their average ('Avg');
    (mean, std) over the complete runs, T + 1 values each."""
    runs = complete_runs(entry)
    if not runs:
        return None
    rows = np.array([np.asarray(run["accuracy_matrix"], np.float64)[-1] for run in runs])
    rows = np.concatenate([rows, rows.mean(axis=1, keepdims=True)], axis=1)
    return rows.mean(axis=0), rows.std(axis=0)


# ---- Pictures ----


def save_figure(fig: Figure, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, lambda f: f.write(buffer.getvalue()), ".png")


def batch_labels(num_batches: int) -> list[str]:
    return [f"B{t + 1}" for t in range(num_batches)]


def plot_accuracy(results: dict, path: str) -> bool:
    strategies = {n: e for n, e in results["strategies"].items() if complete_runs(e)}
    if not strategies:
        return False
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    titles = {"fixed": "fixed test set (all classes)", "expanding": "expanding test set (classes seen so far)"}
    for ax, panel in zip(axes, ("fixed", "expanding"), strict=True):
        for name, entry in strategies.items():
            mean, std = accuracy_curves(entry)[panel]
            x = np.arange(1, len(mean) + 1)
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=f"{name} ({len(complete_runs(entry))} runs)")
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(titles[panel])
        ax.set_xlabel("after batch")
        ax.set_xticks(x, batch_labels(len(x)))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean ± std over runs)")
    axes[1].legend(fontsize=8, loc="best")
    save_figure(fig, path)
    return True


def plot_confusion(results: dict, path: str) -> bool:
    rows = []
    for name, entry in results["strategies"].items():
        runs = entry.get("runs", [])
        if runs and runs[0].get("confusion_matrices"):
            rows.append((name, runs[0]))
    if not rows:
        return False
    cols = max(len(run["confusion_matrices"]) for _, run in rows)
    fig = Figure(figsize=(1.25 * cols + 1.2, 1.35 * len(rows) + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    image = None
    for r, (name, run) in enumerate(rows):
        order, boundaries = stream_order(run["batch_classes"], len(run["confusion_matrices"][0]))
        for t in range(cols):
            ax = axes[r, t]
            ax.set_xticks([])
            ax.set_yticks([])
            if t >= len(run["confusion_matrices"]):
                ax.set_axis_off()
                continue
            cm = ordered_confusion(run["confusion_matrices"][t], order)
            image = ax.imshow(cm, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
            for b in boundaries:
                ax.axhline(b - 0.5, color="white", linewidth=0.3, alpha=0.6)
                ax.axvline(b - 0.5, color="white", linewidth=0.3, alpha=0.6)
            if r == 0:
                ax.set_title(f"after B{t + 1}", fontsize=8)
            if t == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle("confusion matrices, run 0 (rows: true class, columns: predicted; stream order)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    save_figure(fig, path)
    return True


def plot_weight_change(results: dict, path: str) -> bool:
    maps = {n: wc for n, e in results["strategies"].items() if (wc := mean_weight_change(e)) is not None}
    if not maps:
        return False
    vmax = max(float(values.max()) for _, values in maps.values()) or 1.0
    layers = max(len(names) for names, _ in maps.values())
    fig = Figure(figsize=(3.0 * len(maps) + 1.5, 0.22 * layers + 1.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps), squeeze=False)[0])
    image = None
    for ax, (name, (names, values)) in zip(axes, maps.items(), strict=True):
        image = ax.imshow(values, vmin=0.0, vmax=vmax, cmap="magma", aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(np.arange(values.shape[1]), batch_labels(values.shape[1]), fontsize=7)
        ax.set_yticks(np.arange(len(names)), names if ax is axes[0] else [""] * len(names), fontsize=6)
    fig.suptitle("mean |Δθ| per layer after each batch (mean over runs)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="mean absolute weight change")
    save_figure(fig, path)
    return True


def plot_importance(results: dict, path: str) -> bool:
    stats = {n: imp for n, e in results["strategies"].items() if (imp := mean_importance(e)) is not None}
    if not stats:
        return False
    edges = diagnostics.IMPORTANCE_BIN_EDGES
    cols = max(len(imp["F"]) for imp in stats.values())
    # One x range for every panel: the occupied bins (cells 1..-2 are the bins between the edges).
    occupied = np.flatnonzero(sum(imp[k][:, 1:-1].sum(axis=0) for imp in stats.values() for k in ("F", "F_hat")))
    low, high = (edges[occupied[0]], edges[occupied[-1] + 1]) if occupied.size else (edges[0], edges[-1])
    positive = [c[c > 0].min() for imp in stats.values() for k in ("F", "F_hat") if (c := imp[k][:, 1:-1]).any()]
    floor = 0.5 * min(positive, default=1.0)
    fig = Figure(figsize=(2.3 * cols + 0.8, 2.0 * 2 * len(stats) + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(2 * len(stats), cols, squeeze=False))
    for s, (name, imp) in enumerate(stats.items()):
        for k, (key, symbol) in enumerate((("F", "F"), ("F_hat", "F̂"))):
            for t in range(cols):
                ax = axes[2 * s + k, t]
                if t >= len(imp[key]):
                    ax.set_axis_off()
                    continue
                counts = imp[key][t]
                # One filled step artist per panel; its baseline sits below the smallest mean count
                # (1 / runs), since log axes have no zero.
                ax.stairs(counts[1:-1], edges, baseline=floor, fill=True, alpha=0.85)
                ax.set_xscale("log")
                ax.set_yscale("log", nonpositive="clip")
                ax.set_ylim(bottom=floor)
                ax.minorticks_off()  # log axes' minor ticks dominate the drawing time
                ax.xaxis.set_major_locator(LogLocator(numticks=5))
                ax.set_xlim(low / 3, high * 3)
                total = max(counts.sum(), 1.0)
                note = f"<{edges[0]:.0e} (0 incl.): {counts[0] / total:.1%}"
                if key == "F_hat":
                    ax.axvline(imp["max_f"][t], color="red", linestyle="--", linewidth=0.8)
                    note += f"\nsaturated at max_F: {imp['saturated'][t]:.2%}"
                ax.text(0.02, 0.97, note, transform=ax.transAxes, fontsize=6, va="top")
                ax.set_title(f"{name}: {symbol} after B{t + 1}", fontsize=8)
                ax.tick_params(labelsize=6)
    fig.suptitle("importance values (weights per bin, log axes; mean over runs; red: max_F)", fontsize=9)
    save_figure(fig, path)
    return True


def setting_labels(results: dict, other: dict, workdir: str, compare: str) -> tuple[str, str]:
    a, b = results["config"].get("setting", "sit"), other["config"].get("setting", "sit")
    if a != b:
        return a.upper(), b.upper()
    return os.path.basename(os.path.normpath(workdir)), os.path.basename(os.path.normpath(compare))


def compared_strategies(results: dict, other: dict) -> list[str]:
    return [
        n
        for n, e in results["strategies"].items()
        if n in other["strategies"] and complete_runs(e) and complete_runs(other["strategies"][n])
    ]


def plot_compare(results: dict, other: dict, labels: tuple[str, str], path: str) -> bool:
    names = compared_strategies(results, other)
    if not names:
        return False
    fig = Figure(figsize=(4.0 * len(names) + 0.5, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True, squeeze=False)[0])
    for ax, name in zip(axes, names, strict=True):
        for k, (res, label) in enumerate(zip((results, other), labels, strict=True)):
            mean, std = last_batch_accuracies(res["strategies"][name])
            x = np.arange(len(mean))
            ax.bar(x + (k - 0.5) * 0.4, mean, width=0.4, yerr=std, capsize=2, label=label)
        ax.set_xticks(x, batch_labels(len(mean) - 1) + ["Avg"], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy on the batch's classes\nafter the last batch")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)
    return True


# ---- report.md ----


def fmt(mean: float, std: float | None = None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def results_table(results: dict) -> list[str]:
    lines = [
        "| strategy | complete runs | " + " | ".join(label for _, label in TABLE_METRICS) + " |",
        "|---|---|" + "---|" * len(TABLE_METRICS),
    ]
    for name, entry in results["strategies"].items():
        s = summary_of(entry)
        done = f"{len(complete_runs(entry))}/{len(entry.get('runs', []))}"
        if s is None:
            lines.append(f"| {name} | {done} |" + " – |" * len(TABLE_METRICS))
            continue
        cells = [fmt(s[f"{key}_mean"], s[f"{key}_std"]) for key, _ in TABLE_METRICS]
        lines.append(f"| {name} | {done} | " + " | ".join(cells) + " |")
    return lines


def per_run_table(results: dict) -> list[str]:
    lines = [
        "| strategy | run | " + " | ".join(label for _, label in TABLE_METRICS) + " |",
        "|---|---|" + "---|" * len(TABLE_METRICS),
    ]
    for name, entry in results["strategies"].items():
        s = summary_of(entry)
        if s is None:
            continue
        for k, run in enumerate(s["run_indices"]):
            cells = [fmt(s[f"{key}_per_run"][k]) for key, _ in TABLE_METRICS]
            lines.append(f"| {name} | {run} | " + " | ".join(cells) + " |")
    return lines


def grid_tables(results: dict) -> list[str]:
    """One table per strategy with a hyper-grid: a row per grid point, a column per gridded field."""
    grids: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in results["strategies"].items():
        if entry.get("hparams"):
            grids.setdefault(entry["strategy"], []).append((name, entry))
    lines = []
    for strategy, points in grids.items():
        fields = list(points[0][1]["hparams"])
        lines += [
            f"### Grid: {strategy}",
            "",
            "| " + " | ".join(fields) + " | complete runs | " + " | ".join(label for _, label in TABLE_METRICS) + " |",
            "|" + "---|" * (len(fields) + 1 + len(TABLE_METRICS)),
        ]
        best = max(
            (e for _, e in points if summary_of(e)), key=lambda e: summary_of(e)["final_accuracy_mean"], default=None
        )
        for _, entry in points:
            values = " | ".join(f"{entry['hparams'][f]:g}" for f in fields)
            s = summary_of(entry)
            done = f"{len(complete_runs(entry))}/{len(entry.get('runs', []))}"
            if s is None:
                lines.append(f"| {values} | {done} |" + " – |" * len(TABLE_METRICS))
                continue
            cells = [fmt(s[f"{key}_mean"], s[f"{key}_std"]) for key, _ in TABLE_METRICS]
            if entry is best:
                cells[0] = f"**{cells[0]}**"
            lines.append(f"| {values} | {done} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def diverged_lines(results: dict) -> list[str]:
    lines = []
    for name, entry in results["strategies"].items():
        for run in entry.get("runs", []):
            if run.get("diverged") is not None:
                d = run["diverged"]
                lines.append(
                    f"- {name} run {run['run']}: loss or gradient not finite in batch {d['batch'] + 1} "
                    f"at step {d['step']}; left out of the means"
                )
    return lines


def compare_table(results: dict, other: dict, labels: tuple[str, str]) -> list[str]:
    names = compared_strategies(results, other)
    num_batches = len(last_batch_accuracies(results["strategies"][names[0]])[0]) - 1
    header = " | ".join(batch_labels(num_batches) + ["Avg"])
    lines = [f"| strategy | setting | {header} |", "|---|---|" + "---|" * (num_batches + 1)]
    for name in names:
        for res, label in zip((results, other), labels, strict=True):
            mean, _ = last_batch_accuracies(res["strategies"][name])
            lines.append(f"| {name} | {label} | " + " | ".join(fmt(v) for v in mean) + " |")
    return lines


def markdown(results: dict, workdir: str, pictures: list[tuple[str, str, str]], compare_lines: list[str] | None) -> str:
    c = results["config"]
    lines = [
        f"# cljax report: {workdir}",
        "",
        f"Dataset `{c.get('dataset')}`, model `{c.get('model')}`, setting `{c.get('setting')}`, "
        f"{c.get('num_runs')} runs, strategies `{c.get('strategies')}`.",
        "",
        "## Results",
        "",
        "Mean ± std over the complete runs (from results.json). Accuracy on the fixed test set after the last "
        "batch; average accuracy = mean of the accuracies after each batch; forgetting (Chaudhry et al. 2018) "
        "and BWT (Lopez-Paz & Ranzato 2017) from the accuracy matrix R[i, j] (test classes of B_j after B_i).",
        "",
        *results_table(results),
        "",
        *grid_tables(results),
        "### Per run",
        "",
        *per_run_table(results),
        "",
    ]
    diverged = diverged_lines(results)
    if diverged:
        lines += ["### Diverged runs", "", *diverged, ""]
    if compare_lines:
        lines += [
            "## Compared settings (Fig. 3)",
            "",
            "Accuracy on the test classes of each batch after the last batch, and their average; mean over runs.",
            "",
            *compare_lines,
            "",
        ]
    for title, filename, caption in pictures:
        lines += [f"## {title}", "", caption, "", f"![{title}]({filename})", ""]
    lines += ["## Configuration", "", "```json", json.dumps(c, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write_report(workdir: str, compare: str | None = None) -> str:
    """Writes ``<workdir>/report/`` (pictures + report.md); returns the path of report.md."""
    if not os.path.exists(os.path.join(workdir, "results.json")):
        raise ReportError(f"workdir={workdir!r} has no results.json; run cljax.main with this --workdir first")
    results = diagnostics.read_results(workdir)
    out = os.path.join(workdir, REPORT_DIR)
    os.makedirs(out, exist_ok=True)
    candidates = [
        (
            "Accuracy per batch",
            "accuracy.png",
            "Mean over the complete runs, band ±1 std (Fig. 7-8). Left: fixed test set; right: expanding test set.",
            plot_accuracy,
        ),
        (
            "Confusion matrices",
            "confusion_matrices.png",
            "After each batch, run 0, classes in its stream order, rows normalised (Fig. 10-12). A vertical band "
            "moving right is forgetting; a sharp band on few classes signals saturated capacity (Fig. 12).",
            plot_confusion,
        ),
        (
            "Weight change per layer",
            "weight_change.png",
            "Mean |θ after B_i − θ before B_i| per parameter (of the evaluated model), mean over runs (Fig. 13).",
            plot_weight_change,
        ),
        (
            "Importance distribution",
            "importance.png",
            "F (raw accumulated importance) and F̂ (clipped, used by the penalty) after each batch, log axes; "
            "red line and label: max_F and the fraction of F̂ saturated at it (Fig. 4-5).",
            plot_importance,
        ),
    ]
    pictures = []
    for title, filename, caption, plot in candidates:
        if plot(results, os.path.join(out, filename)):
            pictures.append((title, filename, caption))
    compare_lines = None
    if compare is not None:
        if not os.path.exists(os.path.join(compare, "results.json")):
            raise ReportError(f"compare={compare!r} has no results.json")
        other = diagnostics.read_results(compare)
        labels = setting_labels(results, other, workdir, compare)
        names = compared_strategies(results, other)
        if not names:
            raise ReportError(f"compare={compare!r} shares no strategy with complete runs with workdir={workdir!r}")
        sizes = {len(r["strategies"][names[0]]["runs"][0]["batch_classes"]) for r in (results, other)}
        if len(sizes) > 1:
            raise ReportError(f"compare={compare!r} has a different number of batches than workdir={workdir!r}")
        plot_compare(results, other, labels, os.path.join(out, "compare.png"))
        compare_lines = compare_table(results, other, labels)
        pictures.append(
            (
                f"{labels[0]} vs {labels[1]}",
                "compare.png",
                f"Accuracy on each batch's classes after the last batch and their average (Fig. 3); "
                f"{labels[1]} from {compare}.",
            )
        )
    path = os.path.join(out, "report.md")
    write_text_atomic(path, markdown(results, workdir, pictures, compare_lines))
    return path


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        path = write_report(flags.FLAGS.workdir, flags.FLAGS.compare)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {path}")


if __name__ == "__main__":
    from absl import app, flags

    # Defined here, not at import: cljax.experiment imports this module inside cljax.main's process.
    flags.DEFINE_string("workdir", "runs/default", "Workdir holding results.json (from cljax.main).")
    flags.DEFINE_string("compare", None, "Another workdir of the same stream (e.g. --config.setting=mt) to compare.")
    app.run(main)
