"""Drivers of module 05 (inference): they run in the learner's process (stdlib, NumPy, torch,
`_contract` only). The models are built here from torch.nn layers."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array
from bncourse.grading.drivers._questions import run_questions  # noqa: F401 (re-exported)

__all__ = ["run_batchnorm_eval", "run_fold", "run_recalibrate", "run_questions",
           "build_conv_bn", "build_model", "batchnorms"]


def batchnorms(model):
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def run_batchnorm_eval(fn, inputs):
    x = inputs["x"].copy()
    args = [inputs[k].copy() for k in ("gamma", "beta", "running_mean", "running_var")]
    kwargs = {"eps": inputs["eps"]} if inputs["eps"] != 1e-5 else {}
    return {"out": as_array(fn(x, *args, **kwargs), "out")}


# --- fold_conv_bn -------------------------------------------------------------------------

def build_conv_bn(inputs):
    import torch

    c = inputs["conv"]
    conv = torch.nn.Conv2d(c["in"], c["out"], c["kernel"], stride=c["stride"],
                           padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                           bias=inputs["b"] is not None)
    bn = torch.nn.BatchNorm2d(c["out"], eps=inputs["eps"])
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(inputs["W"]))
        if inputs["b"] is not None:
            conv.bias.copy_(torch.from_numpy(inputs["b"]))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(torch.from_numpy(inputs["bn_" + name]))
    return conv.eval(), bn.eval()


def _snapshot(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _same(a, b):
    import torch

    return all(set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def run_fold(fn, inputs):
    import torch

    conv, bn = build_conv_bn(inputs)
    before = _snapshot(conv, bn)
    folded = fn(conv, bn)
    if not isinstance(folded, torch.nn.Conv2d):
        raise SubmissionError(f"fold_conv_bn must return a torch.nn.Conv2d, got "
                              f"{type(folded).__name__}")
    result = {"weight_shape": list(folded.weight.shape),
              "has_bias": folded.bias is not None,
              "geometry": [list(map(int, folded.stride)), list(map(int, folded.padding)),
                           list(map(int, folded.dilation)), int(folded.groups)],
              "unchanged": _same(before, _snapshot(conv, bn)) and not bn.training,
              "same_object": folded is conv}
    with torch.no_grad():
        result["y"] = as_array(folded(torch.from_numpy(inputs["x"])), "the folded layer's output")
    return result


# --- recalibrate_bn -----------------------------------------------------------------------

def build_model(inputs):
    import torch
    from torch import nn

    torch.manual_seed(inputs["model_seed"])
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(6, 3), nn.BatchNorm1d(3, momentum=0.3))
    with torch.no_grad():
        for index, rm, rv in ((1, "rm1", "rv1"), (5, "rm5", "rv5")):
            model[index].running_mean.copy_(torch.from_numpy(inputs[rm]))
            model[index].running_var.copy_(torch.from_numpy(inputs[rv]))
            model[index].num_batches_tracked.fill_(100)
            model[index].weight.copy_(torch.from_numpy(inputs["w" + rm[2:]]))
    return model.train() if inputs["start_in_train"] else model.eval()


def run_recalibrate(fn, inputs):
    import torch

    model = build_model(inputs)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    dropout_modes = []
    model[3].register_forward_pre_hook(lambda m, args: dropout_modes.append(bool(m.training)))
    batches = [torch.from_numpy(x) for x in inputs["batches"]]
    out = fn(model, batches)
    if not isinstance(out, torch.nn.Module):
        raise SubmissionError(f"recalibrate_bn must return the model, got {type(out).__name__}")
    norms = batchnorms(out)
    result = {"n_norms": len(norms),
              "momenta": [float(-1 if m.momentum is None else m.momentum) for m in norms],
              "training": [bool(m.training) for m in out.modules()],
              "dropout_forwards": len(dropout_modes),
              "dropout_on": any(dropout_modes),
              "weights_unchanged": all(torch.equal(weights[k], v.detach())
                                       for k, v in out.named_parameters() if k in weights),
              "no_grads": all(p.grad is None for p in out.parameters())}
    for i, m in enumerate(norms):
        result[f"running_mean_{i}"] = as_array(m.running_mean, "running_mean")
        result[f"running_var_{i}"] = as_array(m.running_var, "running_var")
        result[f"num_batches_tracked_{i}"] = int(m.num_batches_tracked)
    return result

