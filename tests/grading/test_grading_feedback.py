"""`bncourse.check`: solutions pass, stubs say "not implemented yet", mistakes get hints, and
nothing a learner passes in makes it raise."""
import re

import numpy as np
import pytest
import torch

import bncourse
from bncourse.grading import registry

ALL_IDS = sorted(registry.EXERCISES)


@pytest.mark.parametrize("exercise_id", ALL_IDS)
def test_solution_passes_every_check(exercise_id, solution_objects, capsys):
    name = exercise_id.split(".", 1)[1]
    report = bncourse.check(exercise_id, solution_objects[name])
    out = capsys.readouterr().out
    assert report.passed, out
    assert report.score == pytest.approx(1.0)
    assert "✗" not in out and "all checks pass" in out


@pytest.mark.parametrize("exercise_id", ALL_IDS)
def test_stub_is_not_implemented_yet(exercise_id, capsys):
    exercise = registry.get(exercise_id)
    if exercise.name == "BatchNormFunction":
        class Stub(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                raise NotImplementedError("replace this line with your code")
        obj = Stub
    elif exercise.kind == "class":
        class Stub(torch.nn.Module):
            def __init__(self, *args, **kwargs):
                super().__init__()
                raise NotImplementedError("replace this line with your code")
        obj = Stub
    else:
        def obj(*args, **kwargs):
            raise NotImplementedError("replace this line with your code")
    report = bncourse.check(exercise_id, obj)
    out = capsys.readouterr().out
    assert report.score == 0 and report.not_implemented
    assert out.startswith(f"{exercise_id}: not implemented yet")


def _biased(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes, ddof=1)


def _eps_outside(x, gamma, beta, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    out = gamma.reshape(shape) * (x - mu) / (np.sqrt(var) + eps) + beta.reshape(shape)
    return out.astype(x.dtype), None


def _forward_difference(f, x, dout, h=1e-5):
    grad = np.zeros_like(x)
    f0 = np.sum(dout * f(x))
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        grad[i] = (np.sum(dout * f(x)) - f0) / h
        x[i] = old
    return grad


def _no_mean_path(dout, x, gamma, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    var = x.var(axis=axes, keepdims=True)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(var + eps)
    dx = dout * gamma.reshape(shape) / np.sqrt(var + eps)
    stages = {"x_hat": dout * gamma.reshape(shape), "inv_std": np.zeros(x.shape[1]),
              "var": np.zeros(x.shape[1]), "mu": np.zeros(x.shape[1])}
    return dx, (dout * x_hat).sum(axis=axes), dout.sum(axis=axes), stages


def _bn_class(unbiased=True, no_grad=True):
    class BN(torch.nn.Module):
        def __init__(self, num_features, eps=1e-5, momentum=0.1):
            super().__init__()
            self.eps, self.momentum = eps, momentum
            self.weight = torch.nn.Parameter(torch.ones(num_features))
            self.bias = torch.nn.Parameter(torch.zeros(num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0))

        def forward(self, x):
            if self.training:
                mean, var = x.mean(0), x.var(0, correction=0)
                new_var = x.var(0, correction=1 if unbiased else 0)
                m = self.momentum
                if no_grad:
                    with torch.no_grad():
                        self.running_mean.mul_(1 - m).add_(m * mean)
                        self.running_var.mul_(1 - m).add_(m * new_var)
                else:
                    self.running_mean = (1 - m) * self.running_mean + m * mean
                    self.running_var = (1 - m) * self.running_var + m * new_var
                self.num_batches_tracked += 1
            else:
                mean, var = self.running_mean, self.running_var
            return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias
    return BN


def _eval_with_batch_stats(x, gamma, beta, running_mean, running_var, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    return (gamma.reshape(shape) * x_hat + beta.reshape(shape)).astype(x.dtype)


def _fold_without_bias_through_bn(conv, bn):
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                 stride=conv.stride, padding=conv.padding,
                                 dilation=conv.dilation, groups=conv.groups)
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else 0
        folded.bias.copy_(bias + bn.bias - bn.running_mean * scale)
    return folded


def _recalibrate_without_reset(model, batches):
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    return model.eval()


def _bf(x, gamma, beta, eps=1e-5):
    return bncourse.reference.batchnorm_forward(x, gamma, beta, eps)


MISTAKES = [
    ("02.batch_statistics", _biased, "biased variance"),
    ("02.batchnorm_forward", _eps_outside, "eps goes inside the square root"),
    ("03.numerical_gradient", _forward_difference, "centred differences"),
    ("03.batchnorm_backward", _no_mean_path, "paths through the batch mean"),
    ("04.BatchNorm1d", _bn_class(unbiased=False), "running_var must be the unbiased variance"),
    ("04.BatchNorm1d", _bn_class(no_grad=False), "did you forget to detach/no_grad"),
    ("05.batchnorm_eval", _eval_with_batch_stats, "use running_mean and running_var"),
    ("05.fold_conv_bn", _fold_without_bias_through_bn, "the convolution's bias goes through BN"),
    ("05.recalibrate_bn", _recalibrate_without_reset, "reset the running statistics first"),
    ("02.batchnorm_forward", _bf, "flagged: uses bncourse.reference.batchnorm_forward"),
    ("02.batch_statistics", lambda x: (x.mean(), x.var()), "has shape (), expected"),
]


@pytest.mark.parametrize("exercise_id, obj, hint", MISTAKES,
                         ids=[f"{m[0]}-{m[2][:20]}" for m in MISTAKES])
def test_common_mistake_gets_its_hint(exercise_id, obj, hint, capsys):
    report = bncourse.check(exercise_id, obj)
    out = capsys.readouterr().out
    assert report.score < 1
    assert hint in out, out


ODD = [None, 42, "batch_statistics", np.zeros(3), lambda: None, lambda x: None,
       lambda x: (np.zeros(3, dtype=object), None), lambda x: {"mean": 1},
       lambda x: (_ for _ in ()).throw(KeyboardInterrupt()), lambda x: exec("raise SystemExit(3)"),
       lambda x: (np.full(x.shape[1], np.nan), np.ones(x.shape[1]))]


@pytest.mark.parametrize("obj", ODD, ids=range(len(ODD)))
def test_check_never_raises(obj, capsys):
    report = bncourse.check("02.batch_statistics", obj)
    out = capsys.readouterr().out
    assert report.score == 0
    assert out.strip()


def test_unknown_exercise_is_a_message_not_an_exception(capsys):
    report = bncourse.check("99.nothing", lambda: None)
    assert "unknown exercise_id" in capsys.readouterr().out
    assert report.score == 0


def test_infinite_loop_is_stopped_in_process(capsys):
    def spin(x):
        while True:
            try:
                while True:
                    pass
            except Exception:  # does not catch the time limit (a BaseException)
                pass

    report = bncourse.check("02.batch_statistics", spin, timeout=0.2)
    out = capsys.readouterr().out
    assert report.score == 0
    assert out.count("stopped after 0.2 s") == 3


def test_output_is_deterministic(solution_objects, capsys):
    outputs = []
    for _ in range(2):
        bncourse.check("02.batch_statistics", _biased)
        bncourse.check("04.BatchNorm1d", _bn_class(unbiased=False))
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert not re.search(r"0x[0-9a-f]{6,}|\d+\.\d+ ?s\b", outputs[0])


def test_numbers_in_a_mismatch_never_print_the_same():
    from bncourse.grading.checks import fmt

    assert fmt(0.87581234) == "0.8758"
    got, expected = 0.87581234, 0.87584321
    assert fmt(got, expected) != fmt(expected, got)
    assert fmt(2.16, 2.16) == "2.16"  # equal numbers stay short


def test_a_printed_report_is_not_shown_again_as_the_cell_result(capsys):
    report = bncourse.check("02.batch_statistics", lambda x: None)
    printed = capsys.readouterr().out
    assert printed.startswith("02.batch_statistics")
    report._ipython_display_()  # what Jupyter calls for a cell's last value
    assert capsys.readouterr().out == ""
    quiet = bncourse.check("02.batch_statistics", lambda x: None, quiet=True)
    assert capsys.readouterr().out == ""
    quiet._ipython_display_()
    assert capsys.readouterr().out == quiet.text() + "\n"
