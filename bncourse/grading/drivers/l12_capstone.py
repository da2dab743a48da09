"""Drivers of module 12 (the capstone: batch norm of padded variable-length sequences).

Each `run_*(obj, inputs)` calls the learner's object on arrays the grader made and returns plain
data. Runs in the learner's process: imports only NumPy, torch and `_contract`.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack

__all__ = ["run_forward", "run_backward", "run_module", "run_training"]

STATE = ("running_mean", "running_var", "num_batches_tracked")


def run_forward(fn, inputs):
    """masked_batchnorm_forward(x, mask, gamma, beta, eps) -> out."""
    x, mask = inputs["x"].copy(), inputs["mask"].copy()
    out = fn(x, mask, inputs["gamma"].copy(), inputs["beta"].copy(), inputs["eps"])
    return {"out": as_array(out, "masked_batchnorm_forward's output"),
            "x_unchanged": bool(np.array_equal(x, inputs["x"]))}


def run_backward(fn, inputs):
    """masked_batchnorm_backward(dout, x, mask, gamma, eps) -> (dx, dgamma, dbeta)."""
    dx, dgamma, dbeta = unpack(fn(inputs["dout"].copy(), inputs["x"].copy(),
                                  inputs["mask"].copy(), inputs["gamma"].copy(), inputs["eps"]),
                               ("dx", "dgamma", "dbeta"), "masked_batchnorm_backward")
    return {"dx": as_array(dx, "dx"), "dgamma": as_array(dgamma, "dgamma"),
            "dbeta": as_array(dbeta, "dbeta")}


def _tensor(module, name):
    import torch

    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise SubmissionError(f"the module has no tensor attribute `{name}` (got "
                              f"{type(value).__name__})")
    return value


def run_module(cls, inputs):
    """Build MaskedBatchNorm1d(C, momentum=...), run a scenario, return what it produced."""
    import torch

    module = cls(inputs["C"], momentum=inputs["momentum"])
    if not isinstance(module, torch.nn.Module):
        raise SubmissionError(f"MaskedBatchNorm1d must subclass torch.nn.Module, got "
                              f"{type(module).__name__}")
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        raise SubmissionError("flagged: MaskedBatchNorm1d subclasses torch's batch norm; the "
                              "capstone asks you to write it yourself")
    result = {"keys": ",".join(sorted(module.state_dict()))}
    with torch.no_grad():
        _tensor(module, "weight").copy_(torch.from_numpy(inputs["weight"]))
        _tensor(module, "bias").copy_(torch.from_numpy(inputs["bias"]))
    module.train()
    for step in range(inputs["steps"]):
        x = torch.from_numpy(inputs[f"x{step}"].copy()).requires_grad_(inputs["grad"])
        mask = torch.from_numpy(inputs[f"mask{step}"].copy())
        out = module(x, mask)
        if not isinstance(out, torch.Tensor):
            raise SubmissionError(f"forward must return a tensor, got {type(out).__name__}")
        result[f"out{step}"] = as_array(out, "the training-mode output")
        if inputs["grad"] and step == inputs["steps"] - 1:
            (out * torch.from_numpy(inputs["dout"])).sum().backward()
            result["dx"] = as_array(x.grad if x.grad is not None else torch.zeros_like(x), "dx")
            result["dweight"] = as_array(_tensor(module, "weight").grad, "weight.grad")
            result["dbias"] = as_array(_tensor(module, "bias").grad, "bias.grad")
    for name in STATE:
        result[name] = as_array(_tensor(module, name), name)
    if "x_eval" in inputs:
        module.eval()
        with torch.no_grad():
            out = module(torch.from_numpy(inputs["x_eval"].copy()),
                         torch.from_numpy(inputs["mask_eval"].copy()))
        result["out_eval"] = as_array(out, "the eval-mode output")
        for name in STATE:  # eval mode must not touch the running statistics
            result[name + "_after_eval"] = as_array(_tensor(module, name), name)
    return result


def run_training(fn, inputs):
    """train_and_predict(x_train, mask_train, y_train, x_test, mask_test) -> (N_test,) labels.
    The test labels stay with the grader."""
    import torch

    args = [torch.from_numpy(inputs[name].copy()) for name in
            ("x_train", "mask_train", "y_train", "x_test", "mask_test")]
    predictions = fn(*args)
    predictions = as_array(predictions, "the predictions")
    if predictions.shape != (len(inputs["x_test"]),):
        raise SubmissionError(f"train_and_predict must return one class label per test "
                              f"sequence, shape ({len(inputs['x_test'])},), got "
                              f"{predictions.shape}")
    return {"predictions": predictions.astype(np.int64)}
