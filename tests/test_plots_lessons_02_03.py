"""Plot helpers of lessons 02 and 03: each returns a Figure whose axes are labelled."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from bncourse.plots import plot_feature_histograms, plot_heatmaps, plot_jacobian


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _panels(fig):
    """The axes that hold data (colour bars excluded)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _assert_labelled(fig, n_panels):
    assert isinstance(fig, Figure)
    axes = _panels(fig)
    assert len(axes) == n_panels
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    assert fig.get_suptitle()


RNG = np.random.default_rng(0)
X = RNG.normal(size=(50, 5))

HISTOGRAM_CASES = [
    # (kwargs, expected number of panels)
    (dict(), 2 * 4),  # default: the first min(C, 4) features
    (dict(features=[1]), 2),
    (dict(features=[0, 4], names=["normal", "last"]), 4),
]


@pytest.mark.parametrize("kwargs, n_panels", HISTOGRAM_CASES)
def test_plot_feature_histograms_returns_labelled_figure(kwargs, n_panels):
    fig = plot_feature_histograms(X, (X - X.mean(0)) / X.std(0), **kwargs)
    _assert_labelled(fig, n_panels)


def test_plot_feature_histograms_titles_name_features_and_rows():
    fig = plot_feature_histograms(X, X, features=[2], names=["skewed"])
    titles = [ax.get_title() for ax in _panels(fig)]
    assert titles == ["skewed, before BN", "skewed, after BN"]


@pytest.mark.parametrize(
    "before, after, kwargs, match",
    [
        (X, X[:10], {}, "same shape"),
        (X[:, 0], X[:, 0], {}, r"\(N, C\)"),
        (X, X, dict(features=[]), "features"),
        (X, X, dict(features=[0, 1], names=["a"]), "names"),
    ],
)
def test_plot_feature_histograms_rejects_bad_input(before, after, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_feature_histograms(before, after, **kwargs)


@pytest.mark.parametrize("symmetric", [True, False])
def test_plot_heatmaps_one_panel_and_colour_bar_each(symmetric):
    panels = {"a": np.eye(3), "b": torch.arange(6.0).reshape(2, 3)}
    fig = plot_heatmaps(panels, title="t", xlabel="x", ylabel="y", colorbar_label="c",
                        symmetric=symmetric)
    _assert_labelled(fig, 2)
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 2
    assert all(cb.get_ylabel() == "c" for cb in colour_bars)


def test_plot_heatmaps_symmetric_scale_is_centred_on_zero():
    fig = plot_heatmaps({"m": np.array([[-1.0, 3.0]])}, "t", "x", "y", "c", symmetric=True)
    vmin, vmax = _panels(fig)[0].images[0].get_clim()
    np.testing.assert_allclose([vmin, vmax], [-3.0, 3.0])


@pytest.mark.parametrize(
    "panels, match", [({}, "at least one"), ({"v": np.ones(3)}, "2-D")]
)
def test_plot_heatmaps_rejects_bad_input(panels, match):
    with pytest.raises(ValueError, match=match):
        plot_heatmaps(panels, "t", "x", "y", "c")


@pytest.mark.parametrize(
    "jacobians, n_panels",
    [(np.eye(4) - 0.25, 1), ({"one feature": np.eye(6), "two features": np.eye(8)}, 2)],
)
def test_plot_jacobian_labels_inputs_and_outputs(jacobians, n_panels):
    fig = plot_jacobian(jacobians)
    _assert_labelled(fig, n_panels)
    for ax in _panels(fig):
        assert ax.get_xlabel() == "input index j"
        assert ax.get_ylabel() == "output index i"
