"""bncourse.cases.vision: percentile tracking, the Figure-1 and Table-1 runs, their summaries."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.cases import vision
from bncourse.data import Dataset, load_digits
from bncourse.models import mlp
from bncourse.train import History, train_classifier


def _toy(n=240, d=12, classes=3, image=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, d, generator=g)
    if image:
        x = x.reshape(n, 1, 4, d // 4)
    half = n * 3 // 4
    return Dataset(x[:half], y[:half], x[half:], y[half:], classes, "toy")


def test_tracker_records_percentiles_of_the_unit_input():
    torch.manual_seed(0)
    model = mlp([12, 7, 3], norm=bnn.BatchNorm1d)
    probe = torch.randn(50, 12)
    tracker = vision.PercentileTracker(vision.last_activation(model), probe, unit=2, every=5)
    tracker.record(0, model)
    for step in range(1, 11):
        tracker(step, model)
    assert tracker.steps == [0, 5, 10] and tracker.values.shape == (3, 3)
    model.eval()
    with torch.no_grad():
        z = model[1](model[0](probe))[:, 2]  # BN's output: the sigmoid's input
    expected = np.percentile(z.double().numpy(), [15, 50, 85])
    np.testing.assert_allclose(tracker.values[0], expected, rtol=1e-6)
    assert tracker.median_range() == 0.0  # nothing trained


def test_tracker_leaves_mode_and_running_statistics_alone():
    model = mlp([12, 7, 3], norm=bnn.BatchNorm1d).train()
    before = model[1].running_mean.clone()
    tracker = vision.PercentileTracker(vision.last_activation(model), torch.randn(20, 12) + 3)
    tracker.record(0, model)
    assert model.training
    torch.testing.assert_close(model[1].running_mean, before)


def test_tracker_as_train_classifier_callback():
    data = _toy()
    model = mlp([12, 8, 3])
    tracker = vision.PercentileTracker(vision.last_activation(model), data.x_test, every=4)
    train_classifier(model, data, steps=12, batch_size=20, callback=tracker)
    assert tracker.steps == [4, 8, 12]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(module="sigmoid"), TypeError, "module"),
    (dict(probe=torch.randn(1, 4)), ValueError, "probe"),
    (dict(probe=[1, 2]), ValueError, "probe"),
    (dict(every=0), ValueError, "every"),
])
def test_tracker_bad_arguments(kwargs, error, match):
    args = dict(module=nn.Sigmoid(), probe=torch.randn(5, 4))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        vision.PercentileTracker(**args)


def test_tracker_module_not_in_model():
    model = mlp([4, 3, 2])
    tracker = vision.PercentileTracker(nn.Sigmoid(), torch.randn(5, 4))
    with pytest.raises(ValueError, match="module never ran"):
        tracker.record(0, model)


def test_last_activation():
    model = mlp([4, 3, 3, 2], activation=nn.Tanh)
    assert vision.last_activation(model) is model[3]
    with pytest.raises(ValueError, match="no Sigmoid"):
        vision.last_activation(nn.Linear(2, 2))


def test_fig1_runs_pairs_share_seeds_and_batches():
    data = _toy()
    runs = vision.fig1_runs(data, seeds=(0, 1), steps=20, lr=0.5, eval_every=10, track_every=10,
                            hidden=(6, 6))
    assert list(runs) == ["Without BN", "With BN"]
    for name, rs in runs.items():
        assert [r.seed for r in rs] == [0, 1]
        assert all(r.history.steps == [10, 20] and r.tracker.steps == [0, 10, 20] for r in rs)
    # Same seed, same initial unit input without BN; BN's output starts centred instead.
    assert runs["Without BN"][0].tracker.values.shape == (3, 3)


@pytest.mark.parametrize("kwargs, match", [(dict(seeds=()), "seeds"), (dict(seeds=(0.5,)), "seeds")])
def test_fig1_runs_bad_seeds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vision.fig1_runs(_toy(), steps=2, **kwargs)


def test_fig1_runs_needs_flat_inputs():
    with pytest.raises(ValueError, match="flat inputs"):
        vision.fig1_runs(_toy(image=True), steps=2)


def test_table1_runs_variants_and_divergence_flag():
    data = _toy(image=True)
    runs = vision.table1_runs(data, variants=["Baseline", "BN-x5"], seeds=(0,), steps=10,
                              base_lr=0.01, eval_every=5, stem=2,
                              widths=((1, 1, 1, 1),))
    assert list(runs) == ["Baseline", "BN-x5"]
    assert runs["BN-x5"][0].extra["lr"] == pytest.approx(0.05)
    assert runs["Baseline"][0].history.steps == [5, 10]
    assert all(not r.extra["diverged"] for rs in runs.values() for r in rs)
    blown = vision.table1_runs(data, variants={"huge": (False, nn.ReLU, 1)}, seeds=(0,), steps=5,
                               base_lr=1e6, eval_every=5, stem=2, widths=((1, 1, 1, 1),))
    assert blown["huge"][0].extra["diverged"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(variants=["BN-x7"]), "unknown"),
    (dict(seeds=[]), "seeds"),
])
def test_table1_runs_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vision.table1_runs(_toy(image=True), steps=1, **kwargs)


def test_table1_runs_needs_images():
    with pytest.raises(ValueError, match="images"):
        vision.table1_runs(_toy(), steps=1)


def _run(name, seed, steps, accs):
    return vision.Run(name, seed, History(steps=steps, train_loss=[0.0] * len(steps),
                                          test_accuracy=accs))


def test_summarise_and_ratio():
    runs = {"slow": [_run("slow", 0, [10, 20, 30], [0.2, 0.5, 0.8]),
                     _run("slow", 1, [10, 20, 30], [0.2, 0.4, 0.6])],
            "fast": [_run("fast", 0, [10, 20, 30], [0.8, 0.9, 0.9]),
                     _run("fast", 1, [10, 20, 30], [0.5, 0.8, 0.9])]}
    rows = {r["name"]: r for r in vision.summarise(runs, 0.8)}
    assert rows["slow"]["reached"] == 1 and rows["slow"]["steps"] == [30, None]
    assert rows["slow"]["steps_mean"] == 30 and rows["slow"]["best_mean"] == pytest.approx(0.7)
    assert rows["fast"]["steps_mean"] == 15 and rows["fast"]["steps_std"] == pytest.approx(
        math.sqrt(50))
    assert vision.ratio(runs["slow"], runs["fast"], 0.8) == [3.0, math.inf]
    with pytest.raises(ValueError, match="lower target"):
        vision.ratio(runs["fast"], runs["slow"], 0.8)
    never = vision.summarise({"x": [_run("x", 0, [1], [0.1])]}, 0.5)[0]
    assert never["reached"] == 0 and math.isnan(never["steps_mean"])


def test_placement_runs():
    runs = vision.placement_runs(_toy(), seeds=(0,), steps=10, eval_every=5, hidden=(6,))
    assert list(runs) == ["BN before the nonlinearity", "BN after the nonlinearity"]
    assert all(len(rs) == 1 and rs[0].history.steps == [5, 10] for rs in runs.values())


def test_bias_runs_bias_never_moves():
    data = load_digits()
    result = vision.bias_runs(data, steps=30, eval_every=10)
    assert result["bias_change"] < 1e-5
    assert result["accuracy_gap"] <= 0.02
    assert result["parameters_saved"] == 300
    assert len(result["with"].steps) == 3


def test_paper_figures_quoted():
    assert "31.0M" in vision.PAPER["Inception"] and "2.1M" in vision.PAPER["BN-x5"]
    assert "74.8%" in vision.PAPER["BN-x30"] and "4.9%" in vision.PAPER["ensemble"]
    assert set(vision.TABLE1_VARIANTS) == {"Baseline", "BN-Baseline", "BN-x5", "BN-x30",
                                           "BN-x5-Sigmoid"}
