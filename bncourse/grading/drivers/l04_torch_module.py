"""Drivers of module 04 (torch module): they run in the learner's process (stdlib, NumPy,
torch, `_contract` only). The CNN the learner's BatchNorm1d is trained in is built here from
torch.nn layers (no torch batch norm)."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack
from bncourse.grading.drivers._questions import run_questions  # noqa: F401 (re-exported)

__all__ = ["STATE", "run_batchnorm1d", "run_function", "run_questions", "small_cnn"]

STATE = ("running_mean", "running_var", "num_batches_tracked")


def tensor_attribute(module, name):
    import torch

    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise SubmissionError(f"the module has no tensor attribute `{name}` (got "
                              f"{type(value).__name__})")
    return value


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
    if any(base.__module__.startswith("bncourse.") for base in type(module).__mro__[1:]):
        raise SubmissionError("flagged: BatchNorm1d subclasses the course's batch norm; this "
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


def small_cnn(cls, hidden=32):
    """Conv 3x3 (1 -> 8) - ReLU - max-pool - Linear (128 -> hidden) - BN(hidden) - ReLU -
    Linear (hidden -> 10), for 8x8 digits."""
    import torch
    from torch import nn

    bn = cls(hidden)
    if not isinstance(bn, nn.Module):
        raise SubmissionError(f"BatchNorm1d must subclass torch.nn.Module, got "
                              f"{type(bn).__name__}")
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, hidden, bias=False), bn,
                         nn.ReLU(), nn.Linear(hidden, 10))


def _train_cnn(cls, inputs):
    import torch

    torch.manual_seed(inputs["seed"])
    model = small_cnn(cls)
    x, y = torch.from_numpy(inputs["x_train"]), torch.from_numpy(inputs["y_train"])
    optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"], momentum=0.9)
    generator = torch.Generator().manual_seed(inputs["seed"])
    model.train()
    for _ in range(inputs["steps"]):
        index = torch.randint(len(x), (inputs["batch_size"],), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs["x_test"]))
        one = model(torch.from_numpy(inputs["x_test"][:1]))
    if not isinstance(logits, torch.Tensor):
        raise SubmissionError("the network's output is not a tensor")
    accuracy = float((logits.argmax(1).numpy() == inputs["y_test"]).mean())
    same_one = bool(torch.allclose(one, logits[:1], rtol=1e-4, atol=1e-5))
    return {"accuracy": accuracy, "eval_batch_independent": same_one,
            "loss": float(loss.detach())}


def run_batchnorm1d(cls, inputs):
    import torch

    part = inputs["part"]
    result = {}
    torch.manual_seed(0)
    module = _construct(cls, inputs)
    if part == "train_cnn":
        return _train_cnn(cls, inputs)
    if part == "init":
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        result["parameters"] = sorted(params)
        result["buffers"] = sorted(buffers)
        result["state_dict"] = sorted(module.state_dict())
        for name in ("weight", "bias") + STATE:
            result[name] = as_array(tensor_attribute(module, name), name)
        result["num_batches_tracked_dtype"] = str(tensor_attribute(module,
                                                                   "num_batches_tracked").dtype)
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


# --- the autograd.Function ----------------------------------------------------------------

def _check_function(cls):
    import torch

    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        raise SubmissionError("BatchNormFunction must subclass torch.autograd.Function")
    if any(base.__module__.startswith("bncourse.") for base in cls.__mro__[1:]):
        raise SubmissionError("flagged: BatchNormFunction subclasses the course's Function; "
                              "this exercise asks you to write it yourself")


def _apply(cls, x, weight, bias, eps):
    import torch

    out = unpack(cls.apply(x, weight, bias, eps), ("y", "mean", "var"),
                 "BatchNormFunction.apply")
    for name, value in zip(("y", "mean", "var"), out):
        if not isinstance(value, torch.Tensor):
            raise SubmissionError(f"{name} must be a tensor, got {type(value).__name__}")
    return out


def run_function(cls, inputs):
    import torch

    _check_function(cls)
    part = inputs["part"]
    x = torch.tensor(inputs["x"], requires_grad=True)
    weight = torch.tensor(inputs["weight"], requires_grad=True)
    bias = torch.tensor(inputs["bias"], requires_grad=True)
    eps = inputs["eps"]
    if part == "gradcheck":
        ok = torch.autograd.gradcheck(lambda a, w, b: _apply(cls, a, w, b, eps)[0],
                                      (x, weight, bias), raise_exception=False)
        return {"gradcheck": bool(ok)}
    saved = []
    if part == "saved":
        def pack(tensor):
            saved.append(tensor)
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, mean, var = _apply(cls, x, weight, bias, eps)
        big = [t for t in saved if t.numel() >= x.numel() and t.data_ptr() != x.data_ptr()]
        return {"extra_full_size": len(big)}
    y, mean, var = _apply(cls, x, weight, bias, eps)
    result = {"y": as_array(y, "y"), "mean": as_array(mean, "mean"), "var": as_array(var, "var")}
    if part == "own_backward":
        name = type(y.grad_fn).__name__ if y.grad_fn is not None else "None"
        result["grad_fn"] = name
        result["own"] = name == f"{cls.__name__}Backward"
        result["stats_differentiable"] = bool(mean.requires_grad or var.requires_grad)
        return result
    if part == "backward":
        if y.grad_fn is None:
            raise SubmissionError("y has no grad_fn: is it computed from x inside forward?")
        grads = torch.autograd.grad(y, (x, weight, bias), torch.from_numpy(inputs["dy"]),
                                    allow_unused=True)
        for name, g in zip(("x", "weight", "bias"), grads):
            if g is None:
                raise SubmissionError(f"backward returned None for the gradient of {name}")
            result[f"d{name}"] = as_array(g, f"the gradient of {name}")
    return result

