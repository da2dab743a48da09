"""Tests for bncourse.nn.fold: folding BN into Linear/Conv, and PreciseBN recalibration."""
import copy

import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.nn import fold_batchnorm, recalibrate_batchnorm

BN = {  # (library, dims) -> class
    ("torch", 1): nn.BatchNorm1d, ("torch", 2): nn.BatchNorm2d, ("torch", 3): nn.BatchNorm3d,
    ("bncourse", 1): bnn.BatchNorm1d, ("bncourse", 2): bnn.BatchNorm2d,
    ("bncourse", 3): bnn.BatchNorm3d,
}


def _layer(kind: str, bias: bool):
    """A layer with 4 input and 5 output channels, and an input shape for it."""
    if kind == "linear":
        return nn.Linear(4, 5, bias=bias), (16, 4), 1
    if kind == "conv1d":
        return nn.Conv1d(4, 5, 3, padding=1, bias=bias), (8, 4, 7), 1
    if kind == "conv2d":
        return nn.Conv2d(4, 5, 3, padding=1, bias=bias), (4, 4, 6, 5), 2
    if kind == "conv3d":
        return nn.Conv3d(4, 5, 3, padding=1, bias=bias), (2, 4, 4, 5, 3), 3
    raise AssertionError(kind)


def _trained_bn(bn: nn.Module) -> nn.Module:
    """Give a BN non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.2, 3)
        if bn.weight is not None:
            bn.weight.uniform_(-2, 2)
        if bn.bias is not None:
            bn.bias.uniform_(-1, 1)
    return bn


CASES = [
    (kind, lib, bias, affine)
    for kind in ("linear", "conv1d", "conv2d", "conv3d")
    for lib in ("torch", "bncourse")
    for bias in (True, False)
    for affine in (True, False)
]


def _model(kind, lib, bias, affine, nested=False):
    layer, shape, dims = _layer(kind, bias)
    bn = _trained_bn(BN[lib, dims](5, affine=affine))
    body = nn.Sequential(layer, bn, nn.ReLU())
    model = nn.Sequential(nn.Identity(), body, nn.Tanh()) if nested else body
    return model.eval(), shape


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("kind, lib, bias, affine", CASES)
def test_fold_matches_eval_output(kind, lib, bias, affine, nested):
    torch.manual_seed(0)
    model, shape = _model(kind, lib, bias, affine, nested)
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    # one module fewer, no BN left, and the input model untouched
    assert len(list(folded.modules())) == len(list(model.modules())) - 1
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, bnn.BatchNorm1d,
                                  bnn.BatchNorm2d, bnn.BatchNorm3d)) for m in folded.modules())
    assert any(isinstance(m, (nn.modules.batchnorm._BatchNorm, bnn.BatchNorm1d,
                              bnn.BatchNorm2d, bnn.BatchNorm3d)) for m in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    layer = folded[1][0] if nested else folded[0]
    assert layer.bias is not None and isinstance(layer.bias, nn.Parameter)


def test_fold_several_layers_and_state_dict_names():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), _trained_bn(nn.BatchNorm2d(8)), nn.ReLU(),
        nn.Conv2d(8, 6, 3), _trained_bn(bnn.BatchNorm2d(6)), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 7), _trained_bn(nn.BatchNorm1d(7)),
    ).eval()
    folded = fold_batchnorm(model)
    assert len(folded) == len(model) - 3
    # surviving modules keep their names, so their state_dict keys are unchanged
    assert set(folded.state_dict()) == {"0.weight", "0.bias", "3.weight", "3.bias",
                                        "7.weight", "7.bias"}
    x = torch.randn(10, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_float64_is_exact_to_double_precision():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), _trained_bn(nn.BatchNorm1d(5))).double().eval()
    x = torch.randn(9, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=1e-12, atol=1e-12)


def test_fold_without_bn_returns_an_equal_copy():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU()).eval()
    folded = fold_batchnorm(model)
    assert folded is not model and len(folded) == 2
    torch.testing.assert_close(folded[0].weight, model[0].weight)


ERRORS = [
    # (description, model factory, exception, message fragments)
    ("training mode", lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
     ValueError, ["call model.eval() first", "running statistics"]),
    ("BN in training mode inside eval model",
     lambda: _with_bn_training(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()),
     ValueError, ["call model.eval() first"]),
    ("first module", lambda: nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 4)).eval(),
     ValueError, ["model[0]", "BatchNorm1d", "follows nothing"]),
    ("after activation",
     lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), bnn.BatchNorm1d(4)).eval(),
     ValueError, ["model[2]", "BatchNorm1d", "follows ReLU"]),
    ("two BN in a row",
     lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4)).eval(),
     ValueError, ["model[2]", "follows BatchNorm1d"]),
    ("channel mismatch", lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(5)).eval(),
     ValueError, ["model[1]", "BatchNorm1d(5)", "4 output channels"]),
    ("dimension mismatch", lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm1d(4)).eval(),
     ValueError, ["model[1]", "Conv2d is followed by BatchNorm2d"]),
    ("no running stats",
     lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval(),
     ValueError, ["model[1]", "BatchNorm1d", "no running statistics"]),
    ("no running stats, bncourse",
     lambda: nn.Sequential(nn.Linear(3, 4), bnn.BatchNorm1d(4, track_running_stats=False)).eval(),
     ValueError, ["model[1]", "BatchNorm1d", "no running statistics"]),
    ("nested index",
     lambda: nn.Sequential(nn.Identity(), nn.Sequential(nn.Tanh(), nn.BatchNorm1d(3))).eval(),
     ValueError, ["model[1][1]", "follows Tanh"]),
    ("BN inside a non-Sequential module",
     lambda: nn.Sequential(nn.Linear(3, 4), nn.ModuleDict({"bn": nn.BatchNorm1d(4)})).eval(),
     ValueError, ["model[1]", "ModuleDict", "only BN layers placed directly"]),
    ("not a Sequential", lambda: nn.Linear(3, 4).eval(), TypeError, ["nn.Sequential", "Linear"]),
]


def _with_bn_training(model):
    model[1].train()
    return model


@pytest.mark.parametrize("description, factory, error, fragments", ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_fold_errors(description, factory, error, fragments):
    with pytest.raises(error) as info:
        fold_batchnorm(factory())
    for fragment in fragments:
        assert fragment in str(info.value)


# ---------------------------------------------------------------- recalibrate_batchnorm

def _recal_model(lib: str):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), BN[lib, 2](3, momentum=0.3), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(3 * 5 * 5, 4), BN[lib, 1](4), nn.Dropout(0.5),
    )


def _population_stats(model):
    """Hooks that record every BN layer's inputs; returns (inputs per module, hook handles)."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: inputs.setdefault(mod, []).append(inp[0]))
             for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d,
                                                        bnn.BatchNorm1d, bnn.BatchNorm2d))]
    return inputs, hooks


@pytest.mark.parametrize("lib", ["torch", "bncourse"])
@pytest.mark.parametrize("as_tuples", [False, True])
def test_recalibrate_gives_population_statistics(lib, as_tuples):
    model = _recal_model(lib)
    model.train()
    model[3].eval()  # a mixed set of flags, to check they are all restored
    flags = [m.training for m in model.modules()]
    data = torch.randn(60, 2, 5, 5) * 3 + 1
    batches = list(data.split(12))
    # reference: the BN inputs of the same forward passes, collected by a hook
    inputs, hooks = _population_stats(model)
    recalibrate_batchnorm(model, [(b, torch.zeros(len(b))) for b in batches] if as_tuples
                          else batches)
    for h in hooks:
        h.remove()
    for bn in (model[1], model[6]):
        z = torch.cat(inputs[bn]).double()
        dims = (0,) + tuple(range(2, z.dim()))
        torch.testing.assert_close(bn.running_mean.double(), z.mean(dims), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), z.var(dims, correction=1),
                                   rtol=1e-5, atol=1e-6)
        # equal batch sizes: the average of the batch means is the overall mean
        batch_means = torch.stack([zb.double().mean(dims) for zb in inputs[bn]])
        torch.testing.assert_close(batch_means.mean(0), z.mean(dims), rtol=1e-6, atol=1e-6)
        assert int(bn.num_batches_tracked) == len(batches)
    assert model[1].momentum == 0.3 and model[6].momentum == 0.1
    assert [m.training for m in model.modules()] == flags


def test_recalibrate_first_layer_equals_input_statistics_and_leaves_dropout_alone():
    """The first BN sees conv(x) whatever the flags; dropout must stay in eval mode, which the
    second BN's statistics reveal (dropout in train mode would zero half of its input)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.9), nn.BatchNorm1d(4)).eval()
    data = torch.randn(200, 3) * 2 + 5
    recalibrate_batchnorm(model, data.split(20))
    with torch.no_grad():
        z = model[0](data)  # no dropout: eval mode
    torch.testing.assert_close(model[2].running_mean, z.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[2].running_var, z.var(0), rtol=1e-5, atol=1e-5)
    assert not model.training and not model[1].training and not model[2].training


def test_recalibrate_unequal_batches_weights_by_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3)).eval()
    data = torch.randn(50, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([0.0, 100.0, -3.0])
    recalibrate_batchnorm(model, [data[:5], data[5:45], data[45:]])
    torch.testing.assert_close(model[0].running_mean, data.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[0].running_var, data.var(0), rtol=1e-5, atol=1e-5)


def test_recalibrate_reset_false_continues_the_average():
    torch.manual_seed(0)
    data = torch.randn(80, 3) * 2 + 1
    a, b = list(data[:40].split(10)), list(data[40:].split(10))
    together = recalibrate_batchnorm(nn.Sequential(bnn.BatchNorm1d(3)), a + b)[0]
    model = nn.Sequential(bnn.BatchNorm1d(3))
    recalibrate_batchnorm(model, a)
    recalibrate_batchnorm(model, b, reset=False)
    torch.testing.assert_close(model[0].running_mean, together.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[0].running_var, together.running_var, rtol=1e-5, atol=1e-6)
    assert int(model[0].num_batches_tracked) == 8


def test_recalibrate_beats_a_fresh_ema():
    """After 5 batches with momentum 0.1 the EMA is still mostly its initial (0, 1)."""
    torch.manual_seed(0)
    data = torch.randn(100, 2) + 4
    ema = nn.BatchNorm1d(2)
    for xb in data.split(20):
        ema(xb)
    precise = recalibrate_batchnorm(nn.Sequential(nn.BatchNorm1d(2)), data.split(20))[0]
    ema_error = (ema.running_mean - data.mean(0)).abs().max()
    precise_error = (precise.running_mean - data.mean(0)).abs().max()
    assert precise_error < 1e-5 < 1.0 < ema_error


RECAL_ERRORS = [
    ("no BN", lambda: nn.Sequential(nn.Linear(3, 3)), [torch.randn(4, 3)], ValueError,
     "no BatchNorm module with running statistics"),
    ("BN without running stats",
     lambda: nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)),
     [torch.randn(4, 3)], ValueError, "no BatchNorm module with running statistics"),
    ("empty", lambda: nn.Sequential(nn.BatchNorm1d(3)), [], ValueError, "batches is empty"),
    ("empty generator", lambda: nn.Sequential(nn.BatchNorm1d(3)), iter(()), ValueError,
     "batches is empty"),
    ("bad batch type", lambda: nn.Sequential(nn.BatchNorm1d(3)), [[1, 2, 3]], TypeError,
     "tensors or (x, y) tuples"),
    ("batch of one", lambda: nn.Sequential(nn.BatchNorm1d(3)), [torch.randn(1, 3)], ValueError,
     "Expected more than 1 value per channel"),
]


@pytest.mark.parametrize("description, factory, batches, error, fragment", RECAL_ERRORS,
                         ids=[e[0] for e in RECAL_ERRORS])
def test_recalibrate_errors_leave_the_model_unchanged(description, factory, batches, error,
                                                      fragment):
    model = factory().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d) and m.track_running_stats:
            _trained_bn(m)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error) as info:
        recalibrate_batchnorm(model, batches)
    assert fragment in str(info.value)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not any(m.training for m in model.modules())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm1d))


def test_recalibrate_unused_bn_is_an_error():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="saw no input"):
        recalibrate_batchnorm(Skip(), [torch.randn(4, 3)])


def test_fold_uses_is_batchnorm_and_refuses_per_step_statistics():
    # StepwiseBatchNorm is a batch norm (is_batchnorm), but one affine map per time step: no fold.
    from bncourse.nn.stepwise import StepwiseBatchNorm

    model = nn.Sequential(nn.Linear(4, 3), StepwiseBatchNorm(3, max_length=5)).eval()
    with pytest.raises(ValueError, match=r"running statistics have shape \(5, 3\)"):
        bnn.fold_batchnorm(model)


def test_fold_accepts_a_bn_that_is_not_bound_to_one_rank():
    # A BN class the fold table does not list, recognised by is_batchnorm, folds like BatchNorm1d.
    from bncourse.nn.batchnorm import _BatchNorm

    class AnyRankBatchNorm(_BatchNorm):
        def _check_input_dim(self, input):
            pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), AnyRankBatchNorm(3))
    model(torch.randn(8, 2, 5, 5))  # running statistics away from their initial values
    model.eval()
    x = torch.randn(4, 2, 5, 5)
    folded = bnn.fold_batchnorm(model)
    assert not any(bnn.is_batchnorm(m) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
