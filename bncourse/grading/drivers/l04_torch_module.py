"""Module 04 drivers (lesson 04, a torch module): construct the learner's `BatchNorm1d`,
train it for a few steps, read its outputs, gradients and buffers.

Runs in the learner's process: imports only NumPy, torch and `_contract`."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, tensor_attribute

__all__ = ['STATE', '_run_batchnorm1d']


STATE = ("running_mean", "running_var", "num_batches_tracked")


def _construct(cls, inputs):
    import torch

    if inputs.get("custom"):
        module = cls(inputs["C"], eps=inputs["eps"], momentum=inputs["momentum"])
    else:
        module = cls(inputs["C"])
    if not isinstance(module, torch.nn.Module):
        raise SubmissionError(f"BatchNorm1d must subclass torch.nn.Module, got "
                              f"{type(module).__name__}")
    if (isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and not type(module).__module__.startswith("torch.")):  # not the reference itself
        raise SubmissionError("flagged: BatchNorm1d subclasses torch's batch norm; this "
                              "exercise asks you to write it yourself")
    return module


def _state(module) -> dict:
    state = {}
    for name in STATE:
        tensor = tensor_attribute(module, name)
        state[name] = as_array(tensor, name)
        state[name + "_requires_grad"] = bool(tensor.requires_grad or tensor.grad_fn is not None)
    return state


def _set_affine(module, inputs):
    import torch

    with torch.no_grad():
        tensor_attribute(module, "weight").copy_(torch.from_numpy(inputs["weight"]))
        tensor_attribute(module, "bias").copy_(torch.from_numpy(inputs["bias"]))


def _train_steps(module, inputs, result, record_grads=False):
    import torch

    module.train()
    for step, (x, dy) in enumerate(zip(inputs["batches"], inputs["dys"])):
        # x requires grad, so that running statistics updated outside no_grad would too.
        xt = torch.tensor(x, requires_grad=True)
        y = module(xt)
        if not isinstance(y, torch.Tensor):
            raise SubmissionError(f"forward must return a tensor, got {type(y).__name__}")
        result[f"train_out_{step}"] = as_array(y, "output")
        if record_grads:
            module.zero_grad()
            y.backward(torch.from_numpy(dy))
            for name, tensor in (("x", xt), ("weight", module.weight), ("bias", module.bias)):
                if tensor.grad is None:
                    raise SubmissionError(f"no gradient reached {name}: is it a Parameter "
                                          "and part of the computation?")
                result[f"grad_{name}_{step}"] = as_array(tensor.grad, f"the gradient of {name}")


def _run_batchnorm1d(cls, inputs):
    import torch

    part = inputs["part"]
    result = {}
    torch.manual_seed(0)
    module = _construct(cls, inputs)
    if part == "init":
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        result["parameters"] = sorted(params)
        result["buffers"] = sorted(buffers)
        result["state_dict"] = sorted(module.state_dict())
        for name in ("weight", "bias") + STATE:
            result[name] = as_array(tensor_attribute(module, name), name)
        result["num_batches_tracked_dtype"] = str(tensor_attribute(module, "num_batches_tracked").dtype)
        return result
    _set_affine(module, inputs)
    if part in ("train_forward", "backward"):
        _train_steps(module, inputs, result, record_grads=(part == "backward"))
        return result
    _train_steps(module, inputs, result)
    result.update(_state(module))
    if part in ("eval", "custom"):
        module.eval()
        with torch.no_grad():
            result["eval_out"] = as_array(module(torch.from_numpy(inputs["x_eval"])), "output")
            result["eval_one"] = as_array(module(torch.from_numpy(inputs["x_eval"][:1])),
                                          "output for a batch of one")
        result.update({f"after_eval_{k}": v for k, v in _state(module).items()})
    return result

