"""Pictures and tables of paper section 5 from a workdir: ``<workdir>/report/``.

    python -m cljax.report --workdir=runs/default
    python -m cljax.report --workdir=runs/sit --compare=runs/mt   # adds MT vs SIT (Fig. 3)

Reads ``results.json`` and the per-batch diagnostics beside it
(``diagnostics_<strategy>.npz``, see ``cljax.diagnostics``) and writes:

- ``accuracy.png``: accuracy after each batch, mean over the complete runs with
  a ±1 std band, on the fixed test set (all classes) and on the expanding one
  (classes seen so far) (Fig. 7-8); each entry of results.json (a strategy or a
  hyper-grid point) its own colour and marker (``strategy_styles``);
- ``accuracy_matrix.png``: R[i, j] (accuracy on the test classes of B_j after
  B_i) per strategy, mean over the complete runs, values written in the cells;
- ``confusion_matrices.png``: the confusion matrix after each batch, one row per
  strategy, run 0, rows and columns in stream order (from the batches' classes) so that classes
  of B_1 come first (Fig. 10-12), class ids on the axes; each row (true class) normalised to 1;
- ``weight_change.png``: mean |Δθ| per layer and batch, one heatmap per
  strategy, mean over the complete runs, one log colour scale for all (Fig. 13),
  unchanged layers (exact zeros, e.g. a frozen body) in grey;
- ``importance.png``: for strategies exposing ``Strategy.importance`` (EWC, SI,
  AR1), the distributions of F and F̂ after each batch (one line per batch) on log
  axes, mean counts over the complete runs, with the fraction of F̂ saturated at
  max_F and of values below the first bin (Fig. 4-5);
- ``compare.png`` (with ``--compare``): accuracy on each batch's classes after
  the last batch and their average, for the two workdirs (Fig. 3: MT vs SIT);
- ``report.md``: the results table (from results.json), a table per hyper-grid (best final
  accuracy in bold), per-run values, the configuration, and the pictures.

Pictures are drawn with matplotlib's object-oriented API on the Agg canvas
(no pyplot, no global backend switch) and written atomically. Drawing time goes
to axes, ticks and texts, not to data: a grid of heatmaps is one image in one
axes (``mosaic``), layouts are fixed in inches (no layout engine), and one
histogram is one step artist.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator

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


MEMORY_FIELD = "memory_size"  # the rehearsal strategies' memory (sec. 4.4)


def memory_lines(results: dict) -> tuple[dict[str, list[tuple[float, float, float]]], dict[str, tuple[float, float]]]:
    """Fig. 9 left's numbers, from the entries with complete runs. Strategies with a memory
    (``memory_size`` in their config section): one line per strategy and setting of their other
    grid fields, [(memory size, final accuracy mean, std)] by size; the others (AR1, Naive, ...):
    their final accuracy (mean, std), a horizontal line."""
    config = results.get("config", {})
    lines: dict[str, list[tuple[float, float, float]]] = {}
    flat: dict[str, tuple[float, float]] = {}
    for name, entry in results["strategies"].items():
        s = summary_of(entry)
        if s is None:
            continue
        strategy, hparams = entry.get("strategy", name), entry.get("hparams") or {}
        accuracy = (s["final_accuracy_mean"], s["final_accuracy_std"])
        section = config.get(strategy) if isinstance(config.get(strategy), dict) else {}
        size = hparams.get(MEMORY_FIELD, section.get(MEMORY_FIELD))
        if size is None:
            flat[name] = accuracy
            continue
        others = {k: v for k, v in hparams.items() if k != MEMORY_FIELD}
        label = f"{strategy}[{','.join(f'{k}={v:g}' for k, v in others.items())}]" if others else strategy
        lines.setdefault(label, []).append((float(size), *accuracy))
    return {label: sorted(points) for label, points in lines.items()}, flat


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


def mean_accuracy_matrix(entry: dict) -> np.ndarray | None:
    """R[i, j] (accuracy on the test classes of B_j after B_i, results.json's ``accuracy_matrix``),
    mean over the complete runs, [T, T]; None without complete runs."""
    runs = complete_runs(entry)
    if not runs:
        return None
    return np.mean([np.asarray(run["accuracy_matrix"], np.float64) for run in runs], axis=0)


def mosaic(blocks: Sequence[np.ndarray], cols: int, gap: int = 1) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """2-D blocks on a grid of ``cols`` columns in one array, block k's top-left cell at ``origins[k]``
    (row-major), ``gap`` NaN rows and columns between blocks (drawn blank), NaN after a smaller block:
    a grid of heatmaps drawn as one image in one axes."""
    height = max(np.shape(b)[0] for b in blocks)
    width = max(np.shape(b)[1] for b in blocks)
    rows = -(-len(blocks) // cols)
    image = np.full((rows * (height + gap) - gap, cols * (width + gap) - gap), np.nan)
    origins = []
    for k, block in enumerate(blocks):
        y, x = (k // cols) * (height + gap), (k % cols) * (width + gap)
        image[y : y + np.shape(block)[0], x : x + np.shape(block)[1]] = block
        origins.append((y, x))
    return image, origins


def weight_change_range(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """(vmin, vmax) of the log colour scale of the weight-change picture: the smallest and largest
    nonzero mean |Δθ| over every strategy, layer and batch, so every layer that moved gets a colour
    of the scale (exact zeros, e.g. CWR's frozen body, are drawn apart)."""
    positive = np.concatenate([np.ravel(v)[np.ravel(v) > 0] for v in values])
    if not positive.size:
        return 1e-3, 1.0  # nothing moved: any scale, every cell is drawn as a zero
    low, high = float(positive.min()), float(positive.max())
    return (high / 10, high) if low == high else (low, high)


def log_scale_cells(values: np.ndarray, vmin: float) -> np.ndarray:
    """Weight-change cells as the log colour scale draws them: positive values as they are, exact
    zeros (no place on a log scale) moved below ``vmin``, where the colour map's "under" colour
    marks them as unchanged."""
    return np.where(values > 0, values, vmin / 10)


def importance_shares(imp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per batch: the fraction of weights whose F and F̂ fall below the first histogram edge
    (zeros included; no log axis can show them) and the fraction of F̂ saturated at max_F."""
    below = {key: imp[key][:, 0] / np.maximum(imp[key].sum(axis=1), 1.0) for key in ("F", "F_hat")}
    return {"F_below": below["F"], "F_hat_below": below["F_hat"], "saturated": imp["saturated"]}


# Twelve colours and twelve markers, all distinct, the most separated first (the default job's eight
# strategies, among them the look-alike CWR, CWR+ and AR1 curves, get the first eight).
STYLE_COLOURS = (
    "#1f77b4",  # blue
    "#ff7f0e",  # orange
    "#2ca02c",  # green
    "#d62728",  # red
    "#9467bd",  # purple
    "#17becf",  # cyan
    "#000000",  # black
    "#e377c2",  # pink
    "#8c564b",  # brown
    "#bcbd22",  # olive
    "#7f7f7f",  # grey
    "#e6ab02",  # mustard
)
STYLE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def strategy_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) of each results.json entry (strategies and hyper-grid points such as
    ``ewc[strength=1000]``, each its own line), in order: colours and markers all differ up to 12
    entries; past 12 the marker shifts with each round of colours, so the pairs stay distinct."""
    n = len(STYLE_COLOURS)
    return {name: (STYLE_COLOURS[k % n], STYLE_MARKERS[(k + k // n) % n]) for k, name in enumerate(names)}


# ---- Pictures ----

DPI = 100
FONT = 7  # tick labels and notes; axis labels and titles one or two points larger
ZERO_COLOUR = "#c8c8c8"  # weight-change cells that did not move at all (off the log colour scale)


def save_figure(fig: Figure, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    write_atomic(path, lambda f: f.write(buffer.getvalue()), ".png")


def batch_labels(num_batches: int) -> list[str]:
    return [f"B{t + 1}" for t in range(num_batches)]


def runs_label(entry: dict) -> str:
    n = len(complete_runs(entry))
    return f"{n} run" if n == 1 else f"{n} runs"


def panel_grid(
    rows: int,
    cols: int,
    panel: tuple[float, float],
    margins: tuple[float, float, float, float],
    gaps: tuple[float, float] = (0.3, 0.45),
    **subplot_kw: Any,
) -> tuple[Figure, np.ndarray]:
    """A figure of rows x cols axes of ``panel`` (width, height) inches, with fixed ``margins``
    (left, right, bottom, top) and ``gaps`` (between columns, between rows) in inches. No layout
    engine: its search of every text's extent took most of the drawing time."""
    (w, h), (left, right, bottom, top), (wgap, hgap) = panel, margins, gaps
    width = left + cols * w + (cols - 1) * wgap + right
    height = bottom + rows * h + (rows - 1) * hgap + top
    fig = Figure(figsize=(width, height))
    grid = {
        "left": left / width,
        "right": 1 - right / width,
        "bottom": bottom / height,
        "top": 1 - top / height,
        "wspace": wgap / w,
        "hspace": hgap / h,
    }
    return fig, np.asarray(fig.subplots(rows, cols, squeeze=False, gridspec_kw=grid, **subplot_kw))


def mosaic_axes(
    image: np.ndarray, cell: tuple[float, float], margins: tuple[float, float, float, float]
) -> tuple[Figure, Any]:
    """One axes for a ``mosaic`` image, each cell ``cell`` (width, height) inches: many heatmaps
    drawn as one image, with one set of ticks, instead of a grid of axes."""
    rows, cols = image.shape
    fig, axes = panel_grid(1, 1, (cols * cell[0], rows * cell[1]), margins)
    ax = axes[0, 0]
    ax.spines[:].set_visible(False)
    ax.tick_params(labelsize=FONT, length=2, pad=1)
    return fig, ax


def mosaic_ticks(
    ax: Any, origins: list[tuple[int, int]], x_labels: Sequence[str], y_labels: Sequence[str], every: int = 1
) -> None:
    """Tick labels of every block row (left) and block column (bottom) of a mosaic; ``every``-th cell."""
    rows = sorted({y for y, _ in origins})
    cols = sorted({x for _, x in origins})
    xs, ys = np.arange(0, len(x_labels), every), np.arange(0, len(y_labels), every)
    ax.set_xticks([x + k for x in cols for k in xs], [x_labels[k] for _ in cols for k in xs])
    ax.set_yticks([y + k for y in rows for k in ys], [y_labels[k] for _ in rows for k in ys])


def block_title(ax: Any, origin: tuple[int, int], width: int, text: str) -> None:
    """A title centred 2 points above a mosaic block (in the blank rows above it)."""
    y, x = origin
    ax.annotate(
        text,
        (x + (width - 1) / 2, y - 0.5),
        xytext=(0, 2),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=FONT + 1,
    )


def panel_title(ax: Any, text: str, fontsize: float = FONT + 1) -> None:
    """A title 3 points above a panel, as plain text: ``Axes.set_title`` measures every tick label
    to dodge them, a large share of a small picture's drawing time."""
    ax.annotate(
        text,
        (0.5, 1.0),
        xycoords="axes fraction",
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=fontsize,
    )


def histogram_steps(counts: np.ndarray, edges: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """A histogram as one step line (x, y): from ``floor`` up to each bin's count and back down at the
    end; empty bins at ``floor``, the bottom of the log axis (it has no zero). A line, unlike a
    ``stairs`` patch, costs nothing to autoscale."""
    x = np.concatenate([edges[:1], np.repeat(edges, 2)[1:-1], edges[-1:]])
    y = np.concatenate([[floor], np.repeat(np.where(counts > 0, counts, floor), 2), [floor]])
    return x, y


def figure_title(fig: Figure, text: str) -> None:
    """The picture's title, 0.1 in below the top edge (the panels' margins leave room), wrapped to its width."""
    fig.suptitle(text, y=1 - 0.1 / fig.get_figheight(), va="top", fontsize=FONT + 2, wrap=True)


def side_colorbar(fig: Figure, axes: np.ndarray, mappable: Any, label: str) -> Any:
    """A colour bar 0.2 in right of the panels, as tall as they are (the caller leaves the margin)."""
    width, _ = fig.get_size_inches()
    boxes = [ax.get_position() for ax in np.ravel(axes)]
    top, bottom, right = max(b.y1 for b in boxes), min(b.y0 for b in boxes), max(b.x1 for b in boxes)
    cax = fig.add_axes((right + 0.2 / width, bottom, 0.12 / width, top - bottom))
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=FONT + 1)
    bar.ax.tick_params(labelsize=FONT)
    return bar


def accuracy_figure(results: dict) -> Figure | None:
    strategies = {n: e for n, e in results["strategies"].items() if complete_runs(e)}
    if not strategies:
        return None
    styles = strategy_styles(list(results["strategies"]))
    labels = {n: f"{n} ({runs_label(e)})" for n, e in strategies.items()}
    legend_width = 0.6 + 0.06 * max(len(label) for label in labels.values())
    fig, axes = panel_grid(1, 2, (4.6, 3.4), (0.65, legend_width, 0.5, 0.3), (0.2, 0), sharey=True)
    titles = {"fixed": "fixed test set (all classes)", "expanding": "expanding test set (classes seen so far)"}
    for ax, panel in zip(axes[0], ("fixed", "expanding"), strict=True):
        for name, entry in strategies.items():
            mean, std = accuracy_curves(entry)[panel]
            x = np.arange(1, len(mean) + 1)
            colour, marker = styles[name]
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
            ax.plot(x, mean, color=colour, marker=marker, markersize=5, linewidth=1.3, label=labels[name])
        panel_title(ax, titles[panel], FONT + 2)
        ax.set_xlabel("after batch", fontsize=FONT + 1)
        ax.set_xticks(x, batch_labels(len(x)))
        ax.tick_params(labelsize=FONT)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy (mean ± std over runs)", fontsize=FONT + 1)
    handles, names = axes[0, 0].get_legend_handles_labels()
    right = axes[0, 1].get_position().x1
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(right + 0.01, 0.5), fontsize=FONT + 1, frameon=False)
    return fig


def memory_figure(results: dict) -> Figure | None:
    """Fig. 9 left: final accuracy against memory size, one line per rehearsal strategy (mean ± std
    over runs), the strategies without a memory as horizontal lines; None unless some strategy has
    results at two memory sizes or more."""
    lines, flat = memory_lines(results)
    if not any(len(points) > 1 for points in lines.values()):
        return None
    styles = strategy_styles([*lines, *flat])
    sizes = sorted({size for points in lines.values() for size, _, _ in points})
    fig, axes = panel_grid(1, 1, (4.6, 3.4), (0.65, 1.9, 0.5, 0.3))
    ax = axes[0, 0]
    for label, points in lines.items():
        size, mean, std = (np.array(v) for v in zip(*points, strict=True))
        colour, marker = styles[label]
        ax.errorbar(
            size, mean, yerr=std, color=colour, marker=marker, markersize=5, linewidth=1.3, capsize=2, label=label
        )
    for k, (name, (mean, std)) in enumerate(flat.items()):
        colour, _ = styles[name]
        ax.axhline(mean, color=colour, linestyle=("--", ":", "-.")[k % 3], linewidth=1.3, label=f"{name} (no memory)")
        ax.axhspan(mean - std, mean + std, color=colour, alpha=0.1, linewidth=0)
    panel_title(ax, "final accuracy against memory size (Fig. 9 left)", FONT + 2)
    ax.set_xlabel("memory size (patterns)", fontsize=FONT + 1)
    ax.set_ylabel("final accuracy (mean ± std over runs)", fontsize=FONT + 1)
    ax.set_xticks(sizes, [f"{size:g}" for size in sizes])
    ax.tick_params(labelsize=FONT)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    right = ax.get_position().x1
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(right + 0.01, 0.5), fontsize=FONT + 1, frameon=False)
    return fig


def accuracy_matrix_figure(results: dict) -> Figure | None:
    mats = {n: m for n, e in results["strategies"].items() if (m := mean_accuracy_matrix(e)) is not None}
    if not mats:
        return None
    num_batches = max(len(m) for m in mats.values())
    image, origins = mosaic(list(mats.values()), cols=min(len(mats), 4))
    cell = max(0.32, 2.0 / num_batches)
    fig, ax = mosaic_axes(image, (cell, cell), (0.75, 1.0, 0.55, 0.75))
    colours = ax.imshow(image, vmin=0.0, vmax=1.0, cmap=colormaps["viridis"].with_extremes(bad="white"))
    labels = batch_labels(num_batches)
    mosaic_ticks(ax, origins, labels, labels)
    for (name, m), (y, x) in zip(mats.items(), origins, strict=True):
        block_title(ax, (y, x), len(m), f"{name} ({runs_label(results['strategies'][name])})")
        if num_batches <= 12:  # the values, while a cell holds them; exact zeros (classes not yet seen) left blank
            for (i, j), v in np.ndenumerate(m):
                if v != 0:
                    colour = "white" if v < 0.6 else "black"
                    ax.text(x + j, y + i, f"{v:.2f}", ha="center", va="center", fontsize=FONT - 1, color=colour)
    ax.set_xlabel("test classes of batch B_j", fontsize=FONT + 1)
    ax.set_ylabel("after training on batch B_i", fontsize=FONT + 1)
    figure_title(fig, "accuracy matrix R[i, j] (mean over runs)")
    side_colorbar(fig, ax, colours, "accuracy")
    return fig


def confusion_figure(results: dict) -> Figure | None:
    rows = []
    for name, entry in results["strategies"].items():
        runs = entry.get("runs", [])
        if runs and runs[0].get("confusion_matrices"):
            rows.append((name, runs[0]))
    if not rows:
        return None
    num_classes = len(rows[0][1]["confusion_matrices"][0])
    num_batches = max(len(run["confusion_matrices"]) for _, run in rows)
    orders = [stream_order(run["batch_classes"], num_classes) for _, run in rows]
    blocks, boundaries = [], []
    for (_, run), (order, bounds) in zip(rows, orders, strict=True):
        cms = run["confusion_matrices"]
        blank = np.full((num_classes, num_classes), np.nan)  # a diverged run 0 stops early
        blocks += [ordered_confusion(cms[t], order) if t < len(cms) else blank for t in range(num_batches)]
        boundaries += [bounds if t < len(cms) else [] for t in range(num_batches)]
    cell = float(np.clip(1.3 / num_classes, 0.04, 0.13))  # inches: a matrix is 1.3 in, up to 3 in for 75+ classes
    image, origins = mosaic(blocks, cols=num_batches, gap=int(np.ceil(0.12 / cell)))
    name_width = 0.3 + 0.06 * max(len(name) for name, _ in rows)
    fig, ax = mosaic_axes(image, (cell, cell), (name_width, 1.0, 0.55, 0.75))
    colours = ax.imshow(image, vmin=0.0, vmax=1.0, cmap=colormaps["viridis"].with_extremes(bad="white"))
    # Batch boundaries of every matrix: one line collection per direction for the whole picture.
    hlines, vlines = [], []
    for (y, x), bounds in zip(origins, boundaries, strict=True):
        for b in bounds:
            hlines.append((y + b - 0.5, x - 0.5, x + num_classes - 0.5))
            vlines.append((x + b - 0.5, y - 0.5, y + num_classes - 0.5))
    if hlines:
        ax.hlines(*np.transpose(hlines), color="white", linewidth=0.4, alpha=0.6)
        ax.vlines(*np.transpose(vlines), color="white", linewidth=0.4, alpha=0.6)
    # A class id on every cell while they fit (side by side: about 0.06 in per digit plus a space; one above
    # the other: 0.1 in), else on every k-th cell.
    digits = len(str(num_classes - 1))
    xs = np.arange(0, num_classes, int(np.ceil((0.06 * digits + 0.06) / cell)))
    ys = np.arange(0, num_classes, int(np.ceil(0.1 / cell)))
    ax.set_yticks(
        [y + k for y, _ in origins[::num_batches] for k in ys],
        [str(order[k]) for order, _ in orders for k in ys],
    )
    bottom = orders[-1][0]  # every row's columns are in its own rows' order
    ax.set_xticks([x + k for _, x in origins[:num_batches] for k in xs], [str(bottom[k]) for k in xs] * num_batches)
    for t, (y, x) in enumerate(origins[:num_batches]):
        block_title(ax, (y, x), num_classes, f"after B{t + 1}")
    for (name, _), (y, _) in zip(rows, origins[::num_batches], strict=True):
        ax.annotate(
            name,
            xy=(0, y + (num_classes - 1) / 2),
            xycoords=("axes fraction", "data"),
            xytext=(-8 - 5 * digits, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=FONT + 1,
        )
    ax.set_xlabel("predicted class", fontsize=FONT + 1)
    figure_title(
        fig,
        "confusion matrices of run 0 after each batch\nrows: true class, columns: predicted class, both in "
        "stream order (B_1's classes first); lines between batches",
    )
    side_colorbar(fig, ax, colours, "fraction of the true class")
    return fig


def weight_change_figure(results: dict) -> Figure | None:
    maps = {n: wc for n, e in results["strategies"].items() if (wc := mean_weight_change(e)) is not None}
    if not maps:
        return None
    vmin, vmax = weight_change_range([values for _, values in maps.values()])
    blocks = [log_scale_cells(values, vmin) for _, values in maps.values()]
    image, origins = mosaic(blocks, cols=min(len(maps), 4))
    names = max((names for names, _ in maps.values()), key=len)
    num_batches = max(values.shape[1] for _, values in maps.values())
    name_width = 0.2 + 0.052 * max(len(n) for n in names)
    fig, ax = mosaic_axes(image, (max(0.3, 1.6 / num_batches), 0.2), (name_width, 1.3, 0.45, 0.7))
    cmap = colormaps["viridis"].with_extremes(under=ZERO_COLOUR, bad="white")
    colours = ax.imshow(image, norm=LogNorm(vmin, vmax), cmap=cmap, aspect="auto")
    mosaic_ticks(ax, origins, batch_labels(num_batches), names)
    for name, origin in zip(maps, origins, strict=True):
        block_title(ax, origin, num_batches, name)
    figure_title(fig, "mean |Δθ| per layer (rows) after each batch (columns), mean over runs")
    side_colorbar(fig, ax, colours, "mean |Δθ| (log scale)")
    zero = Patch(color=ZERO_COLOUR, label="0 (unchanged)")
    fig.legend(handles=[zero], loc="lower right", bbox_to_anchor=(1.0, 0.0), fontsize=FONT, frameon=False)
    return fig


def importance_figure(results: dict) -> Figure | None:
    stats = {n: imp for n, e in results["strategies"].items() if (imp := mean_importance(e)) is not None}
    if not stats:
        return None
    edges = diagnostics.IMPORTANCE_BIN_EDGES
    num_batches = max(len(imp["F"]) for imp in stats.values())
    # One x range for every panel: the occupied bins (cells 1..-2 are the bins between the edges).
    occupied = np.flatnonzero(sum(imp[k][:, 1:-1].sum(axis=0) for imp in stats.values() for k in ("F", "F_hat")))
    low, high = (edges[occupied[0]], edges[occupied[-1] + 1]) if occupied.size else (edges[0], edges[-1])
    positive = [c[c > 0].min() for imp in stats.values() for k in ("F", "F_hat") if (c := imp[k][:, 1:-1]).any()]
    floor = 0.5 * min(positive, default=1.0)
    top = 2.0 * max(float(imp[k][:, 1:-1].max()) for imp in stats.values() for k in ("F", "F_hat"))
    fig, axes = panel_grid(len(stats), 2, (3.4, 2.0), (0.8, 2.3, 0.5, 0.5), (0.15, 0.4), sharex=True, sharey=True)
    first = axes[0, 0]
    first.set_xscale("log")
    first.set_yscale("log", nonpositive="clip")
    first.set_xlim(low / 3, high * 3)
    first.set_ylim(floor, top)
    first.xaxis.set_major_locator(LogLocator(numticks=6))
    # Plain labels (1e-08, 100): log axes' default math-text labels cost more to draw than the histograms.
    first.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    first.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    batch_colours = colormaps["viridis"](np.linspace(0.0, 0.9, num_batches))  # B_1 dark to B_T light
    for s, (name, imp) in enumerate(stats.items()):
        shares = importance_shares(imp)
        for ax, key, symbol in ((axes[s, 0], "F", "F (raw)"), (axes[s, 1], "F_hat", "F̂ (used by the penalty)")):
            for t, counts in enumerate(imp[key]):
                label = f"B{t + 1}: {shares['saturated'][t]:.2%} at max_F, {shares[f'{key}_below'][t]:.1%} below"
                ax.plot(
                    *histogram_steps(counts[1:-1], edges, floor), color=batch_colours[t], linewidth=1.0, label=label
                )
            panel_title(ax, f"{name}: {symbol}")
            ax.tick_params(labelsize=FONT)
            ax.minorticks_off()  # log axes' minor ticks dominate the drawing time
        for max_f in np.unique(imp["max_f"]):
            axes[s, 1].axvline(max_f, color="red", linestyle="--", linewidth=0.8, label="max_F")
        axes[s, 0].set_ylabel("weights per bin\n(mean over runs)", fontsize=FONT + 1)
        handles, labels = axes[s, 1].get_legend_handles_labels()
        axes[s, 1].legend(
            handles,
            labels,
            title=f"F̂ after batch B_i: share at max_F,\nshare below {edges[0]:.0e} (zeros incl.)",
            title_fontsize=FONT,
            loc="center left",
            bbox_to_anchor=(1.03, 0.5),
            fontsize=FONT,
            frameon=False,
        )
    for ax in axes[-1]:
        ax.set_xlabel("importance value (4 bins per decade)", fontsize=FONT + 1)
    figure_title(fig, "importance distributions after each batch (log axes)")
    return fig


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
        lines.append(f"| {name} | " + " | ".join(summary_cells(entry)) + " |")
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
            lines.append(f"| {values} | " + " | ".join(summary_cells(entry, bold=entry is best)) + " |")
        lines.append("")
    return lines


def summary_cells(entry: dict, bold: bool = False) -> list[str]:
    """A results table row's cells after its name: complete runs, then each metric's mean ± std
    (– when no run completed); ``bold`` marks the final accuracy (a grid's best point)."""
    done = f"{len(complete_runs(entry))}/{len(entry.get('runs', []))}"
    s = summary_of(entry)
    if s is None:
        return [done] + ["–"] * len(TABLE_METRICS)
    cells = [fmt(s[f"{key}_mean"], s[f"{key}_std"]) for key, _ in TABLE_METRICS]
    if bold:
        cells[0] = f"**{cells[0]}**"
    return [done, *cells]


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
            accuracy_figure,
        ),
        (
            "Accuracy matrix",
            "accuracy_matrix.png",
            "R[i, j]: accuracy on the test classes of B_j after training on B_i, mean over the complete runs "
            "(the matrix behind forgetting and BWT). Below the diagonal: what is kept of earlier batches; "
            "cells without a value are exactly 0.",
            accuracy_matrix_figure,
        ),
        (
            "Accuracy against memory size",
            "memory.png",
            "Final accuracy of each rehearsal strategy at each memory size (one results entry per size, e.g. a "
            "hyper-grid on memory_size), mean ± std over the complete runs; the strategies that store no "
            "pattern (e.g. AR1) as horizontal lines, band ±1 std (Fig. 9 left).",
            memory_figure,
        ),
        (
            "Confusion matrices",
            "confusion_matrices.png",
            "After each batch, run 0, classes in its stream order, rows normalised (Fig. 10-12). A vertical band "
            "moving right is forgetting; a sharp band on few classes signals saturated capacity (Fig. 12).",
            confusion_figure,
        ),
        (
            "Weight change per layer",
            "weight_change.png",
            "Mean |θ after B_i − θ before B_i| per parameter (of the evaluated model), mean over runs (Fig. 13); "
            "log colour scale shared by all strategies, grey: exactly unchanged (e.g. a frozen body).",
            weight_change_figure,
        ),
        (
            "Importance distribution",
            "importance.png",
            "F (raw accumulated importance) and F̂ (clipped, used by the penalty), one line per batch, log axes, "
            "mean over runs; red line: max_F. Legend: the fraction of F̂ saturated at max_F and of the values "
            "below the first bin (Fig. 4-5).",
            importance_figure,
        ),
    ]
    pictures = []
    for title, filename, caption, draw in candidates:
        fig = draw(results)
        if fig is not None:
            save_figure(fig, os.path.join(out, filename))
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
