"""Module 08 drivers (lesson 08, BN in sequence models): the learner's per-step BN module, one
BN-LSTM step, the predictions.

Runs in the learner's process: imports NumPy, torch, `_contract` and the course's library
(lessons 06 on may use it), never the grading references."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, tensor_attribute

__all__ = ['_run_norm', '_run_step', '_run_predictions']


def _buffers(module, prefix=""):
    state = {}
    for name in ("running_mean", "running_var"):
        tensor = tensor_attribute(module, name)
        state[prefix + name] = as_array(tensor, name)
        state[prefix + name + "_requires_grad"] = bool(tensor.requires_grad
                                                       or tensor.grad_fn is not None)
    return state


def _call(module, x, t, what):
    import torch

    y = module(x, t)
    if not isinstance(y, torch.Tensor):
        raise SubmissionError(f"forward must return a tensor, got {type(y).__name__}")
    return as_array(y, what)


def _make_norm(cls, C, max_length, inputs, bias=True):
    import torch

    module = cls(C, max_length, momentum=inputs.get("momentum", 0.1), eps=inputs.get("eps", 1e-5),
                 weight_init=0.1, bias=bias)
    if not isinstance(module, torch.nn.Module):
        raise SubmissionError(f"PerStepBatchNorm must subclass torch.nn.Module, got "
                              f"{type(module).__name__}")
    from bncourse.nn.stepwise import StepwiseBatchNorm

    if (isinstance(module, (StepwiseBatchNorm, torch.nn.modules.batchnorm._BatchNorm))
            and type(module) is not StepwiseBatchNorm):  # not the reference itself
        raise SubmissionError("flagged: PerStepBatchNorm subclasses a batch norm of torch or "
                              "the course; this exercise asks you to write it yourself")
    return module


def _run_norm(cls, inputs):
    import torch

    part, C, L = inputs["part"], inputs["C"], inputs["max_length"]
    result = {}
    torch.manual_seed(0)
    if part == "init":
        module = _make_norm(cls, C, L, inputs)
        result["parameters"] = sorted(n for n, _ in module.named_parameters())
        result["buffers"] = sorted(n for n, _ in module.named_buffers())
        for name in ("weight", "running_mean", "running_var"):
            result[name] = as_array(tensor_attribute(module, name), name)
        result["bias"] = as_array(tensor_attribute(module, "bias"), "bias")
        no_bias = _make_norm(cls, C, L, inputs, bias=False)
        result["no_bias_parameters"] = sorted(n for n, _ in no_bias.named_parameters())
        result["no_bias_is_none"] = getattr(no_bias, "bias", "missing") is None
        return result
    module = _make_norm(cls, C, L, inputs)
    with torch.no_grad():
        tensor_attribute(module, "weight").copy_(torch.from_numpy(inputs["weight"]))
        tensor_attribute(module, "bias").copy_(torch.from_numpy(inputs["bias"]))
    module.train()
    for t, (x, dy) in enumerate(zip(inputs["x"], inputs["dy"])):
        xt = torch.tensor(x, requires_grad=True)
        y = module(xt, t)
        if not isinstance(y, torch.Tensor):
            raise SubmissionError(f"forward must return a tensor, got {type(y).__name__}")
        result[f"train_{t}"] = as_array(y, f"training output at step {t}")
        y.backward(torch.from_numpy(dy))
        if xt.grad is None:
            raise SubmissionError("no gradient reached the input: is the output computed "
                                  "from it with torch operations?")
        result[f"grad_{t}"] = as_array(xt.grad, f"gradient of the input at step {t}")
    result.update(_buffers(module))
    module.eval()
    with torch.no_grad():
        for t, x in enumerate(inputs["x_eval"]):
            result[f"eval_{t}"] = _call(module, torch.from_numpy(x), t, f"eval output at step {t}")
        result["eval_one"] = _call(module, torch.from_numpy(inputs["x_eval"][0][:1]), 0,
                                   "eval output for a batch of one")
    result.update(_buffers(module, "after_eval_"))
    return result


def _make_cell(inputs):
    import torch

    from bncourse.nn.recurrent import BNLSTMCell

    cell = BNLSTMCell(inputs["D"], inputs["H"], max_length=inputs["max_length"])
    with torch.no_grad():
        for name, value in inputs["params"].items():
            cell.get_parameter(name).copy_(torch.from_numpy(value))
    return cell


def _run_step(fn, inputs):
    import torch

    cell = _make_cell(inputs)
    result = {}
    cell.train()
    h = c = torch.zeros(inputs["N"], inputs["H"])
    outputs = []
    for t, x in enumerate(inputs["x"]):
        out = fn(cell, torch.from_numpy(x), h, c, t)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise SubmissionError("bn_lstm_step must return a tuple (h_new, c_new)")
        h, c = out
        result[f"h_{t}"], result[f"c_{t}"] = as_array(h, "h_new"), as_array(c, "c_new")
        outputs.append(h)
    torch.stack(outputs).mul(torch.from_numpy(inputs["dh"])).sum().backward()
    for name in ("weight_hh", "weight_ih", "bn_hh.weight", "bn_c.weight"):
        parameter = cell.get_parameter(name)
        result["no_grad_" + name] = parameter.grad is None
        grad = torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
        result["grad_" + name] = as_array(grad, f"gradient of {name}")
    for name, buffer in cell.named_buffers():
        result[name] = as_array(buffer, name)
    cell.eval()
    h = c = torch.zeros(2, inputs["H"])
    with torch.no_grad():
        for t, x in enumerate(inputs["x_eval"]):
            h, c = fn(cell, torch.from_numpy(x), h, c, t)
            result[f"eval_h_{t}"] = as_array(h, "h_new in eval mode")
    return result


def _run_predictions(fn, inputs):
    answers = fn()
    if not isinstance(answers, dict):
        raise SubmissionError(f"predictions() must return a dict, got {type(answers).__name__}")
    key = inputs["key"]
    if key not in answers:
        raise SubmissionError(f"predictions() has no answer for {key!r}")
    value = answers[key]
    try:
        value = [int(v) for v in value] if isinstance(value, (tuple, list)) else int(value)
    except (TypeError, ValueError):
        raise SubmissionError(f"the answer to {key!r} must be a number or a tuple of "
                              f"numbers, got {value!r}") from None
    return {"value": value}

