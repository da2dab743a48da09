"""Module 05 drivers (lesson 05, inference): `batchnorm_eval`, `fold_linear_bn` on a
Linear + eval-mode BatchNorm1d built from the grader's weights, `recalibrate_bn` on a small model.

Runs in the learner's process: imports only NumPy, torch and `_contract`."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array

__all__ = ['_run_batchnorm_eval', '_run_fold', '_run_recalibrate']


def _run_batchnorm_eval(fn, inputs):
    x = inputs["x"].copy()
    args = [inputs[k].copy() for k in ("gamma", "beta", "running_mean", "running_var")]
    kwargs = {"eps": inputs["eps"]} if inputs["eps"] != 1e-5 else {}
    return {"out": as_array(fn(x, *args, **kwargs), "out")}


def _build_linear_bn(inputs):
    import torch

    out_f, in_f = inputs["W"].shape
    linear = torch.nn.Linear(in_f, out_f, bias=inputs["b"] is not None)
    bn = torch.nn.BatchNorm1d(out_f, eps=inputs["eps"])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(inputs["W"]))
        if inputs["b"] is not None:
            linear.bias.copy_(torch.from_numpy(inputs["b"]))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(torch.from_numpy(inputs["bn_" + name]))
    return linear.eval(), bn.eval()


def _snapshot(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _same(a, b):
    import torch

    return all(set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _run_fold(fn, inputs):
    import torch

    linear, bn = _build_linear_bn(inputs)
    before = _snapshot(linear, bn)
    folded = fn(linear, bn)
    if not isinstance(folded, torch.nn.Linear):
        raise SubmissionError(f"fold_linear_bn must return a torch.nn.Linear, got "
                              f"{type(folded).__name__}")
    result = {"weight_shape": list(folded.weight.shape),
              "has_bias": folded.bias is not None,
              "unchanged": _same(before, _snapshot(linear, bn)) and not bn.training,
              "same_object": folded is linear}
    with torch.no_grad():
        result["y"] = as_array(folded(torch.from_numpy(inputs["x"])), "the folded layer's output")
    return result


def _build_model(inputs):
    import torch

    torch.manual_seed(inputs["model_seed"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3), torch.nn.BatchNorm1d(3, momentum=0.3))
    with torch.no_grad():
        for index, rm, rv in ((1, "rm1", "rv1"), (4, "rm4", "rv4")):
            model[index].running_mean.copy_(torch.from_numpy(inputs[rm]))
            model[index].running_var.copy_(torch.from_numpy(inputs[rv]))
            model[index].num_batches_tracked.fill_(100)
            model[index].weight.copy_(torch.from_numpy(inputs["w" + rm[-1]]))
    return model.train() if inputs["start_in_train"] else model.eval()


def _run_recalibrate(fn, inputs):
    import torch

    model = _build_model(inputs)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = [torch.from_numpy(x) for x in inputs["batches"]]
    out = fn(model, batches)
    if not isinstance(out, torch.nn.Module):
        raise SubmissionError(f"recalibrate_bn must return the model, got {type(out).__name__}")
    norms = [m for m in out.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    result = {"n_norms": len(norms),
              "momenta": [float(-1 if m.momentum is None else m.momentum) for m in norms],
              "training": [bool(m.training) for m in out.modules()],
              "weights_unchanged": all(torch.equal(weights[k], v.detach())
                                       for k, v in out.named_parameters() if k in weights),
              "no_grads": all(p.grad is None for p in out.parameters())}
    for i, m in enumerate(norms):
        result[f"running_mean_{i}"] = as_array(m.running_mean, "running_mean")
        result[f"running_var_{i}"] = as_array(m.running_var, "running_var")
        result[f"num_batches_tracked_{i}"] = int(m.num_batches_tracked)
    return result

