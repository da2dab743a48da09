"""Plot helpers: each returns a matplotlib Figure with labelled axes (lessons 01 onwards).

End the notebook cell with `plt.show()`; the PNG is not compared by nbval, the text is.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from bncourse.train import History

__all__ = [
    "plot_histories", "plot_feature_histograms", "plot_heatmaps", "plot_jacobian",
    "plot_running_estimates", "plot_running_var_bias", "plot_benchmark_ratios",
    "plot_quadratic_descent", "plot_activation_histograms", "plot_per_layer", "plot_update_ratios",
    "plot_estimate_errors", "plot_accuracy_bars", "plot_accuracy_spread", "plot_percentiles",
]


def plot_histories(histories: dict[str, History], title: str = "Test accuracy during training",
                   ylabel: str = "test accuracy"):
    """Test accuracy against training step, one line per labelled History."""
    fig, ax = plt.subplots()
    for label, history in histories.items():
        ax.plot(history.steps, history.test_accuracy, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_feature_histograms(before, after, features=None, names=None, bins: int = 30,
                            labels=("before BN", "after BN"),
                            title: str = "Per-feature distributions before and after BN"):
    """Histograms of a few features: `before[:, j]` on the top row, `after[:, j]` below (lesson 02).

    Args:
        before, after: `(N, C)` arrays, e.g. a layer's input and its BN output.
        features: column indices to show (default: the first `min(C, 4)`).
        names: one short name per shown feature for the panel titles (default: its index).
        bins: histogram bins per panel.
        labels: names of the two rows.

    Returns:
        A Figure with 2 rows and one column per shown feature.
    """
    before, after = np.asarray(before), np.asarray(after)
    if before.ndim != 2 or before.shape != after.shape:
        raise ValueError(
            f"before and after must be (N, C) arrays of the same shape, got {before.shape} "
            f"and {after.shape}"
        )
    features = list(range(min(before.shape[1], 4)) if features is None else features)
    if not features:
        raise ValueError("features must name at least one column")
    names = [f"feature {j}" for j in features] if names is None else list(names)
    if len(names) != len(features):
        raise ValueError(f"names must have one entry per feature ({len(features)}), got {len(names)}")
    fig, axes = plt.subplots(2, len(features), figsize=(2.8 * len(features) + 0.6, 4.8),
                             squeeze=False, layout="constrained")
    for col, (j, name) in enumerate(zip(features, names)):
        for row, (data, label) in enumerate(zip((before, after), labels)):
            ax = axes[row, col]
            ax.hist(data[:, j], bins=bins, color=f"C{row}")
            ax.set_title(f"{name}, {label}", fontsize=9)
            ax.set_xlabel("value")
            ax.set_ylabel("count")
    fig.suptitle(title)
    return fig


def plot_heatmaps(panels: dict, title: str, xlabel: str, ylabel: str, colorbar_label: str,
                  symmetric: bool = True):
    """Matrices side by side as heat maps, each with its own colour bar (lessons 02 and 03).

    Args:
        panels: panel title -> 2-D array (NumPy or torch).
        title, xlabel, ylabel, colorbar_label: text for the figure, every panel and colour bar.
        symmetric: colour scale centred on 0 (diverging map), for signed matrices.

    Returns:
        A Figure with one heat map per panel.
    """
    if not panels:
        raise ValueError("panels must contain at least one matrix")
    matrices = {name: np.asarray(m, dtype=float) for name, m in panels.items()}
    for name, m in matrices.items():
        if m.ndim != 2:
            raise ValueError(f"panels[{name!r}] must be a 2-D array, got shape {m.shape}")
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices) + 0.6, 3.4),
                             squeeze=False, layout="constrained")
    for ax, (name, m) in zip(axes.flat, matrices.items()):
        vmax = float(np.abs(m).max()) or 1.0
        limits = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax) if symmetric else dict(cmap="viridis")
        image = ax.imshow(m, **limits)
        fig.colorbar(image, ax=ax, label=colorbar_label, shrink=0.85)
        ax.grid(False)
        if max(m.shape) <= 16:  # integer ticks only where they can be read
            ax.set_xticks(range(m.shape[1]))
            ax.set_yticks(range(m.shape[0]))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    return fig


def plot_jacobian(jacobians, title: str = r"Jacobian $\partial y_i / \partial x_j$ of BN"):
    """Jacobian heat map(s): entry `(i, j)` is the derivative of output `i` by input `j` (lesson 03).

    Args:
        jacobians: a 2-D array `(outputs, inputs)`, or panel title -> such an array.

    Returns:
        A Figure with one heat map per Jacobian, colour scale centred on 0.
    """
    panels = jacobians if isinstance(jacobians, dict) else {"": jacobians}
    return plot_heatmaps(panels, title=title, xlabel="input index j", ylabel="output index i",
                         colorbar_label=r"$\partial y_i / \partial x_j$")


def plot_running_estimates(batch_values, estimates: dict, title: str = "Running estimates",
                           ylabel: str = "value"):
    """Per-batch values (dots) and running estimates of them (lines) against batch (lesson 04).

    batch_values: `(K,)`, one statistic per batch; estimates: label -> `(K,)`, the running
    estimate after each batch.
    """
    fig, ax = plt.subplots()
    steps = range(1, len(batch_values) + 1)
    ax.plot(steps, batch_values, ".", color="0.6", label="batch statistic")
    for (label, values), style in zip(estimates.items(), ["-", "--", ":", "-."] * 4):
        ax.plot(steps, values, style, linewidth=2, label=label)
    ax.set_xlabel("batch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_running_var_bias(batch_sizes, relative_differences,
                          title: str = "Unbiased vs biased running_var"):
    """Measured relative difference of two running variances against M, with 1/(M-1) (lesson 04).

    batch_sizes: `(K,)` values per channel M; relative_differences: `(K,)` measured.
    """
    m = np.asarray(batch_sizes, dtype=float)
    fig, ax = plt.subplots()
    ax.loglog(m, 1.0 / (m - 1.0), "-", color="0.5", label="1 / (M - 1)")
    ax.loglog(m, relative_differences, "o", label="measured")
    ax.set_xlabel("values per channel in a batch, M")
    ax.set_ylabel("running_var: torch / biased - 1")
    ax.set_title(title)
    ax.legend()
    return fig


def plot_benchmark_ratios(rows, title: str = "Batch norm forward + backward"):
    """Bar charts of time relative to native and peak memory relative to primitives (lesson 04).

    rows: `bncourse.profiling.BenchmarkRow`s (anything with `shape`, `implementation`,
    `ratio_to_native` and `memory_ratio_to_primitives`; a None or NaN ratio draws no bar).
    """
    shapes = list(dict.fromkeys(tuple(r.shape) for r in rows))
    names = list(dict.fromkeys(r.implementation for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    x = np.arange(len(shapes))
    # Time ratios span orders of magnitude (a log axis shows 2x slower and 2x faster alike).
    panels = [("ratio_to_native", "median time / native (log scale)", True),
              ("memory_ratio_to_primitives", "peak memory / primitives", False)]
    for ax, (attr, ylabel, log) in zip(axes, panels):
        top, bottom = 1.0, 1.0
        for i, name in enumerate(names):
            values = []
            for shape in shapes:
                row = next((r for r in rows
                            if tuple(r.shape) == shape and r.implementation == name), None)
                value = None if row is None else getattr(row, attr)
                values.append(np.nan if value is None else value)
            if np.isnan(values).all():  # not measured (NumPy memory): no legend entry either
                continue
            top, bottom = max(top, np.nanmax(values)), min(bottom, np.nanmin(values))
            ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.axhline(1.0, color="0.3", linewidth=1)
        ax.set_xticks(x, ["x".join(str(s) for s in shape) for shape in shapes], rotation=20)
        if log:
            ax.set_yscale("log")
            low, high = 0.5 * bottom, 4.0 * top  # room for the legend above the bars
            ax.set_ylim(low, high)
            ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high]
            ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        else:
            ax.set_ylim(0, 1.3 * top)
        ax.set_xlabel("input shape")
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper center", ncol=len(names), fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- lesson 01: conditioning and per-layer diagnostics (see bncourse.diagnostics) ---

def _axes(ax):
    if ax is None:
        fig, ax = plt.subplots()
    return ax.figure, ax


def _layer_labels(names, prefix="layer"):
    return [f"{prefix} {i}" for i in range(1, len(names) + 1)]


def plot_quadratic_descent(hessian, w_star, path, title: str = "Gradient descent on a quadratic",
                           ax=None, levels: int = 12, window=None):
    """Contours of L(w) = 1/2 (w - w*)^T H (w - w*) and a gradient-descent path, equal axes.

    hessian: `(2, 2)`; w_star: `(2,)`; path: `(K, 2)` iterates w_0 ... w_(K-1); window:
    `(w1_min, w1_max, w2_min, w2_max)` to zoom in, else a square around w* holding the path.
    Lesson 01.
    """
    hessian, w_star, path = np.asarray(hessian), np.asarray(w_star), np.asarray(path)
    fig, ax = _axes(ax)
    if window is None:
        span = np.abs(path - w_star).max() * 1.15
        window = (w_star[0] - span, w_star[0] + span, w_star[1] - span, w_star[1] + span)
    w1, w2 = np.meshgrid(np.linspace(*window[:2], 301), np.linspace(*window[2:], 301))
    d1, d2 = w1 - w_star[0], w2 - w_star[1]
    loss = 0.5 * (hessian[0, 0] * d1**2 + 2 * hessian[0, 1] * d1 * d2 + hessian[1, 1] * d2**2)
    e0 = path[0] - w_star
    start = 0.5 * e0 @ hessian @ e0  # contours from the start's level down, log-spaced
    contour_levels = np.geomspace(start / 1000, min(4 * start, loss.max()), levels)
    ax.contour(w1, w2, loss, levels=contour_levels, cmap="viridis", linewidths=0.8)
    ax.plot(path[:, 0], path[:, 1], "-o", color="C3", markersize=2.5, linewidth=1,
            label=f"gradient descent ({len(path) - 1} steps)")
    ax.plot(*w_star, "k*", markersize=12, label="minimum $w^*$")
    ax.set_aspect("equal")
    ax.set_xlim(*window[:2])
    ax.set_ylim(*window[2:])
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_activation_histograms(activations, title: str = "Activations per layer", bins: int = 50,
                               value_range=(0.0, 1.0), ax=None):
    """Histogram (density, drawn as a line) of each layer's activations, one line per layer.

    activations: `{name: (N, F) tensor}` in layer order, e.g. `ActivationRecorder.activations`;
    layers are labelled 1, 2, ... in that order. Lesson 01.
    """
    fig, ax = _axes(ax)
    cmap = plt.get_cmap("viridis")
    n = len(activations)
    for i, (label, a) in enumerate(zip(_layer_labels(activations), activations.values())):
        values = np.asarray(a, dtype=np.float64).ravel()
        density, edges = np.histogram(values, bins=bins, range=value_range, density=True)
        ax.plot(0.5 * (edges[1:] + edges[:-1]), density, color=cmap(i / max(n - 1, 1)), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("activation value")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_per_layer(values: dict, ylabel: str, title: str, log: bool = True, ax=None,
                   xlabel: str = "layer (input side first)"):
    """One line per labelled series of per-layer values, against layer number 1, 2, ...

    values: `{series label: {module name: value}}`, each inner dict in layer order (e.g.
    `{"no BN": gradient_norms(plain), "BN": gradient_norms(bn)}`). Lesson 01.
    """
    fig, ax = _axes(ax)
    for label, per_layer in values.items():
        ax.plot(range(1, len(per_layer) + 1), list(per_layer.values()), "-o", label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_update_ratios(steps, ratios: dict, title: str = "Update-to-data ratio per layer",
                       reference: float = 1e-3, ax=None):
    """log10 of each layer's update-to-data ratio against training step, one line per layer.

    steps: `(K,)`; ratios: `{module name: K values}` in layer order, e.g.
    `TrainingMonitor.update_to_data`. A dashed line marks `reference` (1e-3). Lesson 01.
    """
    fig, ax = _axes(ax)
    cmap = plt.get_cmap("viridis")
    n = len(ratios)
    for i, (label, values) in enumerate(zip(_layer_labels(ratios), ratios.values())):
        ax.plot(steps, np.log10(np.asarray(values, dtype=np.float64)),
                color=cmap(i / max(n - 1, 1)), label=label)
    ax.axhline(np.log10(reference), color="k", linestyle="--", linewidth=1,
               label=f"$10^{{{np.log10(reference):.0f}}}$ rule of thumb")
    ax.set_xlabel("training step")
    ax.set_ylabel("log10(update / data)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return fig


# --- lesson 05: inference, recalibration ---

def plot_estimate_errors(errors: dict, predicted: dict | None = None,
                         title: str = "Error of running estimates", ylabel: str = "error",
                         ylim=None, ax=None):
    """Error of estimates after each batch, one line per label, log y axis (lesson 05).

    errors: `{label: (K,) errors after batches 1..K}`; predicted: `{label: (K,) model curve}`,
    the j-th drawn dashed in the colour of the j-th error curve; ylim: optional `(low, high)`.
    """
    fig, ax = _axes(ax)
    for j, (label, values) in enumerate(errors.items()):
        ax.plot(range(1, len(values) + 1), np.asarray(values, dtype=np.float64), "-",
                color=f"C{j}", label=label)
    for j, (label, values) in enumerate((predicted or {}).items()):
        ax.plot(range(1, len(values) + 1), np.asarray(values, dtype=np.float64), "--",
                color=f"C{j}", label=label)
    ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("batches seen")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_accuracy_bars(accuracies: dict, title: str = "Test accuracy",
                       ylabel: str = "test accuracy", ax=None):
    """One bar per labelled accuracy (a fraction in [0, 1]), value written on each (lesson 05)."""
    if not accuracies:
        raise ValueError("accuracies must contain at least one labelled value")
    fig, ax = _axes(ax)
    labels = list(accuracies)
    values = [float(v) for v in accuracies.values()]
    bars = ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)), labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


# --- lesson 06: Ioffe & Szegedy's Figure 1 in miniature ---

def plot_accuracy_spread(curves: dict, title: str = "Test accuracy during training",
                         ylabel: str = "test accuracy", ax=None):
    """Mean test accuracy against step with the min-max band over seeds (lesson 06).

    curves: label -> list of Histories (one per seed, evaluated at the same steps).
    """
    if not curves:
        raise ValueError("curves must contain at least one label with its Histories")
    fig, ax = _axes(ax)
    for i, (label, histories) in enumerate(curves.items()):
        steps = histories[0].steps
        acc = np.array([h.test_accuracy for h in histories])  # (seeds, evaluations)
        ax.plot(steps, acc.mean(axis=0), color=f"C{i}", label=f"{label} (mean of {len(acc)})")
        ax.fill_between(steps, acc.min(axis=0), acc.max(axis=0), color=f"C{i}", alpha=0.25)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_percentiles(steps, values, title: str = "Input of one sigmoid over training",
                     labels=("15th", "50th", "85th"), ax=None):
    """Percentiles of one unit's input against step, as in Ioffe & Szegedy's Fig. 1b, c.

    steps: `(T,)`; values: `(T, len(labels))`.
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.shape != (len(steps), len(labels)):
        raise ValueError(f"values must have shape (len(steps), {len(labels)}) = "
                         f"({len(steps)}, {len(labels)}), got {values.shape}")
    fig, ax = _axes(ax)
    for j, label in enumerate(labels):
        ax.plot(steps, values[:, j], color="C0", lw=1.5 if j == len(labels) // 2 else 0.8,
                label=f"{label} percentile")
    ax.set_xlabel("training step")
    ax.set_ylabel("input to the sigmoid")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
