"""Tests for bncourse.diagnostics (lesson 01's per-layer measurements)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from bncourse import nn as bnn
from bncourse.diagnostics import (
    ActivationRecorder,
    ActivationStatistics,
    LayerProbe,
    TrainingMonitor,
    activation_statistics,
    gradient_norms,
    gradient_to_data_ratios,
    probe_layers,
    saturation_fraction,
    update_to_data_ratios,
)


def small_mlp(norm=None, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3), nn.Sigmoid(), nn.Linear(3, 2)]
    if norm is not None:
        layers.insert(1, norm(5))
    return nn.Sequential(*layers)


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)


def backward_once(model):
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    return x, y


# --- saturation_fraction and activation_statistics ---------------------------------------------

SATURATION_CASES = [
    # values, low, high, expected fraction
    ([0.0, 0.5, 1.0, 0.5], 0.05, 0.95, 0.5),
    ([0.04, 0.06, 0.94, 0.96], 0.05, 0.95, 0.5),
    ([0.05, 0.95], 0.05, 0.95, 0.0),  # the thresholds themselves are not saturated
    ([0.2, 0.3], 0.25, 0.75, 0.5),
    ([[0.01, 0.99], [0.99, 0.01]], 0.05, 0.95, 1.0),
]


@pytest.mark.parametrize("values, low, high, expected", SATURATION_CASES)
def test_saturation_fraction(values, low, high, expected):
    for array in (torch.tensor(values), np.array(values)):
        assert math.isclose(saturation_fraction(array, low, high), expected, abs_tol=1e-12)


def test_saturation_of_sigmoid_matches_the_gaussian_tail():
    # sigmoid(z) > 0.95 <=> z > log(19); for z ~ N(0, 4^2) the two-sided tail is 2*P(Z > log(19)/4).
    z = 4.0 * torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = math.erfc(math.log(19) / 4 / math.sqrt(2))
    assert abs(saturation_fraction(torch.sigmoid(z)) - expected) < 0.005


BAD_ACTIVATIONS = [
    ([0.1, 0.2], {}, TypeError, "activations must be a torch.Tensor or numpy.ndarray, got list"),
    (torch.tensor([1, 0]), {}, TypeError, "floating-point"),
    (torch.empty(0, 3), {}, ValueError, r"activations is empty \(shape \(0, 3\)\)"),
    (torch.rand(3), {"low": 0.9, "high": 0.1}, ValueError, "low must be smaller than high"),
]


@pytest.mark.parametrize("activations, kwargs, error, message", BAD_ACTIVATIONS)
def test_saturation_fraction_errors(activations, kwargs, error, message):
    with pytest.raises(error, match=message):
        saturation_fraction(activations, **kwargs)


def test_activation_statistics():
    a = torch.tensor([[0.0, 0.5], [1.0, 0.5]])
    stats = activation_statistics(a)
    assert isinstance(stats, ActivationStatistics)
    np.testing.assert_allclose([stats.mean, stats.std, stats.saturation],
                               [0.5, np.std([0, 0.5, 1, 0.5], ddof=1), 0.5], rtol=1e-12)


@pytest.mark.parametrize("activations, error, message", [
    ("abc", TypeError, "got str"),
    (torch.tensor([0.3]), ValueError, "at least two entries"),
])
def test_activation_statistics_errors(activations, error, message):
    with pytest.raises(error, match=message):
        activation_statistics(activations)


# --- ActivationRecorder ----------------------------------------------------------------------

def test_recorder_records_each_layer_in_order_and_removes_hooks():
    model = small_mlp()
    x, _ = batch()
    with ActivationRecorder(model, nn.Sigmoid) as recorder:
        model(x)
    assert list(recorder.activations) == ["1", "3"]
    torch.testing.assert_close(recorder.activations["1"], torch.sigmoid(model[0](x)))
    assert recorder.activations["3"].shape == (8, 3)
    assert not recorder.activations["1"].requires_grad
    for m in model.modules():
        assert not m._forward_hooks
    model(2 * x)  # after exit nothing is recorded
    torch.testing.assert_close(recorder.activations["1"], torch.sigmoid(model[0](x)))


def test_recorder_keeps_the_last_forward_call_and_other_module_types():
    model = small_mlp(norm=bnn.BatchNorm1d)
    x, _ = batch()
    with ActivationRecorder(model, bnn.BatchNorm1d) as recorder:
        model(x[:4])
        model(x)
    assert list(recorder.activations) == ["1"]
    assert recorder.activations["1"].shape == (8, 5)


def test_recorder_cannot_be_entered_twice():
    recorder = ActivationRecorder(small_mlp())
    with recorder:
        with pytest.raises(RuntimeError, match="already recording"):
            recorder.__enter__()


@pytest.mark.parametrize("model, module_type, error, message", [
    ("not a model", nn.Sigmoid, TypeError, "model must be a torch.nn.Module, got str"),
    (small_mlp(), "Sigmoid", TypeError, "module_type must be a torch.nn.Module subclass"),
    (small_mlp(), int, TypeError, "module_type must be a torch.nn.Module subclass"),
    (small_mlp(), nn.Tanh, ValueError, "model has no Tanh modules"),
])
def test_recorder_errors(model, module_type, error, message):
    with pytest.raises(error, match=message):
        ActivationRecorder(model, module_type)


# --- gradient norms and ratios ---------------------------------------------------------------

def test_gradient_norms_and_ratios():
    model = small_mlp()
    backward_once(model)
    linears = {"0": model[0], "2": model[2], "4": model[4]}
    norms = gradient_norms(model)
    ratios = gradient_to_data_ratios(model)
    updates = update_to_data_ratios(model, lr=0.3)
    assert list(norms) == list(ratios) == list(updates) == list(linears)
    for name, layer in linears.items():
        g = layer.weight.grad.double()
        w = layer.weight.detach().double()
        np.testing.assert_allclose(norms[name], g.norm().item(), rtol=1e-12)
        np.testing.assert_allclose(ratios[name], (g.norm() / w.norm()).item(), rtol=1e-12)
        np.testing.assert_allclose(updates[name], 0.3 * ratios[name], rtol=1e-12)


def test_update_to_data_ratio_is_the_relative_size_of_an_sgd_step():
    model = small_mlp()
    backward_once(model)
    before = [p.detach().clone() for p in model.parameters()]
    ratios = update_to_data_ratios(model, lr=0.1)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for (name, layer), w0 in zip(((n, m) for n, m in model.named_children()
                                  if isinstance(m, nn.Linear)), before[::2]):
        step = (layer.weight.detach() - w0).double().norm() / w0.double().norm()
        np.testing.assert_allclose(ratios[name], step.item(), rtol=1e-5)


@pytest.mark.parametrize("function", [gradient_norms, gradient_to_data_ratios])
def test_gradient_functions_need_backward(function):
    with pytest.raises(ValueError, match=r"module '0' has no gradient: call loss.backward\(\)"):
        function(small_mlp())


@pytest.mark.parametrize("kwargs, error, message", [
    ({"lr": 0.0}, ValueError, "lr must be positive, got 0.0"),
    ({"lr": -1}, ValueError, "lr must be positive"),
    ({"lr": "0.1"}, TypeError, "lr must be a number, got str"),
    ({"lr": 0.1, "module_type": nn.Conv1d}, ValueError, "model has no Conv1d modules"),
    ({"lr": 0.1, "module_type": nn.Sigmoid}, ValueError, "has no weight tensor"),
])
def test_update_to_data_ratio_errors(kwargs, error, message):
    model = small_mlp()
    backward_once(model)
    with pytest.raises(error, match=message):
        update_to_data_ratios(model, **kwargs)


# --- probe_layers and TrainingMonitor --------------------------------------------------------

@pytest.mark.parametrize("norm", [None, bnn.BatchNorm1d])
def test_probe_layers_measures_a_copy(norm):
    model = small_mlp(norm=norm).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch()
    probe = probe_layers(model, x, y)
    assert isinstance(probe, LayerProbe)
    # The model is untouched: parameters, buffers, gradients and mode.
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    # The measurements equal a direct forward/backward in training mode.
    direct = small_mlp(norm=norm)
    direct.load_state_dict(state)
    with ActivationRecorder(direct) as recorder:
        nn.functional.cross_entropy(direct(x), y).backward()
    for name, a in recorder.activations.items():
        torch.testing.assert_close(probe.activations[name], a)
        np.testing.assert_allclose(probe.saturation[name], saturation_fraction(a), rtol=1e-12)
    for name, value in gradient_norms(direct).items():
        np.testing.assert_allclose(probe.gradient_norms[name], value, rtol=1e-5)


@pytest.mark.parametrize("args, error, message", [
    (("model", torch.zeros(2, 4), torch.zeros(2)), TypeError, "model must be a torch.nn.Module"),
    ((small_mlp(), np.zeros((2, 4)), torch.zeros(2)), TypeError, "x and y must be torch.Tensors"),
    ((small_mlp(), torch.zeros(3, 4), torch.zeros(2)), ValueError,
     "same number of rows, got 3 and 2"),
])
def test_probe_layers_errors(args, error, message):
    with pytest.raises(error, match=message):
        probe_layers(*args)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"activation_type": nn.Tanh}, ValueError, r"no Tanh modules \(the activation_type given\)"),
    ({"layer_type": nn.Conv2d}, ValueError, r"no Conv2d modules \(the layer_type given\)"),
    ({"layer_type": "Linear"}, TypeError, "layer_type must be a torch.nn.Module subclass"),
])
def test_probe_layers_module_type_errors(kwargs, error, message):
    x, y = batch()
    with pytest.raises(error, match=message):
        probe_layers(small_mlp(), x, y, **kwargs)


def test_training_monitor_records_every_few_steps():
    from bncourse.data import Dataset
    from bncourse.train import train_classifier

    x, y = batch(n=40)
    data = Dataset(x, y, x, y, num_classes=2, name="toy")
    model = small_mlp()
    monitor = TrainingMonitor(x[:10], y[:10], lr=0.2, every=3)
    train_classifier(model, data, steps=10, batch_size=8, lr=0.2, callback=monitor)
    assert monitor.steps == [3, 6, 9]
    assert list(monitor.update_to_data) == ["0", "2", "4"]
    assert list(monitor.saturation) == list(monitor.activation_mean) == ["1", "3"]
    for record in (monitor.update_to_data, monitor.gradient_norms, monitor.saturation,
                   monitor.activation_mean):
        assert all(len(values) == 3 for values in record.values())
    assert all(0 < v < 1 for values in monitor.update_to_data.values() for v in values)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"lr": 0.1, "every": 0}, ValueError, "every must be at least 1, got 0"),
    ({"lr": 0.1, "every": 2.5}, TypeError, "every must be an int, got float"),
    ({"lr": -0.1}, ValueError, "lr must be positive, got -0.1"),
    ({"lr": None}, TypeError, "lr must be a number, got NoneType"),
])
def test_training_monitor_errors(kwargs, error, message):
    x, y = batch()
    with pytest.raises(error, match=message):
        TrainingMonitor(x, y, **kwargs)


def test_layer_probe_table_pairs_activations_with_weight_layers():
    model = small_mlp()
    x, y = batch()
    probe = probe_layers(model, x, y)
    lines = probe.table().splitlines()
    assert lines[0].split() == ["layer", "act", "mean", "act", "std", "saturated", "|dL/dW|"]
    assert len(lines) == 1 + 3  # two sigmoid layers, three Linear layers
    first = probe.statistics["1"]
    assert lines[1].split()[:3] == ["1", f"{first.mean:.3f}", f"{first.std:.3f}"]
    assert lines[1].split()[-1] == f"{probe.gradient_norms['0']:.1e}"
    assert lines[3].split() == ["3", "-", "-", "-", f"{probe.gradient_norms['4']:.1e}"]
