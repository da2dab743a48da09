"""Module 04 exercise (lesson 04, torch module): a `BatchNorm1d` class, compared with
`torch.nn.BatchNorm1d` scenario by scenario (construction, training forward, backward, running
statistics, eval mode, custom eps/momentum)."""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, SubmissionError, array_mismatch, as_array
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, tensor_attribute
from bncourse.grading.drivers.l04_torch_module import (STATE, _construct, _state, _set_affine, _train_steps, _run_batchnorm1d)  # noqa: F401

__all__ = ["EXERCISES"]

MODULE = "04"
NOTEBOOK = "04_torch_module_exercises.ipynb"
REQUIRED = True  # for the certificate

def _reference_batchnorm1d():
    import torch

    return torch.nn.BatchNorm1d


def _batch_var(x, unbiased):
    return x.var(axis=0, ddof=1 if unbiased else 0)


def _running(inputs, unbiased=True, momentum=None, reset_each=False):
    """Running statistics as a hand-written BN with a given mistake would compute them."""
    momentum = inputs.get("momentum", 0.1) if momentum is None else momentum
    mean = np.zeros(inputs["C"])
    var = np.ones(inputs["C"])
    for x in inputs["batches"]:
        x = x.astype(np.float64)
        mean = (1 - momentum) * mean + momentum * x.mean(0)
        var = (1 - momentum) * var + momentum * _batch_var(x, unbiased)
    return mean, var


TOL = dict(rtol=1e-4, atol=2e-5)


def _compare_init(got, expected, inputs):
    for key, what in (("parameters", "parameters"), ("buffers", "buffers"),
                      ("state_dict", "state_dict keys")):
        if list(got[key]) != list(expected[key]):
            hint = ""
            if key == "parameters":
                hint = " (weight and bias are torch.nn.Parameter; running statistics are not)"
            elif key == "buffers":
                hint = (" (register running_mean, running_var and num_batches_tracked with "
                        "self.register_buffer so they move with .to() and are saved)")
            return f"{what}: got {list(got[key])}, expected {list(expected[key])}{hint}"
    for name in ("weight", "bias") + STATE:
        message = array_mismatch(got[name], expected[name], f"initial {name}", **TOL)
        if message:
            return message
    if got["num_batches_tracked_dtype"] != expected["num_batches_tracked_dtype"]:
        return (f"num_batches_tracked has dtype {got['num_batches_tracked_dtype']}, expected "
                f"{expected['num_batches_tracked_dtype']}")
    return None


def _train_hints(inputs, step):
    x = inputs["batches"][step].astype(np.float64)
    w, b = inputs["weight"], inputs["bias"]
    mu = x.mean(0)
    return (("normalise with the biased batch variance (divide by M, not M−1)",
             lambda: w * (x - mu) / np.sqrt(_batch_var(x, True) + 1e-5) + b),
            ("eps goes inside the square root",
             lambda: w * (x - mu) / (np.sqrt(_batch_var(x, False)) + 1e-5) + b),
            ("in training mode normalise with the batch statistics, not the running ones",
             lambda: w * x / np.sqrt(1 + 1e-5) + b))


def _compare_train_forward(got, expected, inputs):
    for step in range(len(inputs["batches"])):
        message = array_mismatch(got[f"train_out_{step}"], expected[f"train_out_{step}"],
                                 f"training output of batch {step + 1}", **TOL,
                                 hints=_train_hints(inputs, step))
        if message:
            return message
    return None


def _compare_backward(got, expected, inputs):
    for step in range(len(inputs["batches"])):
        for name in ("x", "weight", "bias"):
            key = f"grad_{name}_{step}"
            message = array_mismatch(got[key], expected[key],
                                     f"gradient of {name} (batch {step + 1})", rtol=1e-3,
                                     atol=1e-4)
            if message:
                return message
    return None


def _compare_running(got, expected, inputs, prefix=""):
    if got[prefix + "running_mean_requires_grad"] or got[prefix + "running_var_requires_grad"]:
        return ("the running statistics require grad: did you forget to detach/no_grad the "
                "running statistics update? (update them under torch.no_grad())")
    unbiased_mean, unbiased_var = _running(inputs)
    _, biased_var = _running(inputs, unbiased=False)
    momentum = inputs.get("momentum", 0.1)
    flipped_mean, flipped_var = _running(inputs, momentum=1 - momentum)
    message = array_mismatch(
        got[prefix + "running_mean"], expected[prefix + "running_mean"], "running_mean", **TOL,
        hints=(("momentum weighs the new batch: running = (1 − momentum) * running + "
                "momentum * batch (torch's convention, the opposite of Keras')",
                lambda: flipped_mean),))
    if message:
        return message
    message = array_mismatch(
        got[prefix + "running_var"], expected[prefix + "running_var"], "running_var", **TOL,
        hints=(("running_var must be the unbiased variance (divide by M−1) while the "
                "normalisation uses the biased one", lambda: biased_var),
               ("momentum weighs the new batch: running = (1 − momentum) * running + "
                "momentum * batch", lambda: flipped_var)))
    if message:
        return message
    message = array_mismatch(got[prefix + "num_batches_tracked"],
                             expected[prefix + "num_batches_tracked"], "num_batches_tracked",
                             rtol=0, atol=0.5)
    return message


def _compare_eval(got, expected, inputs):
    x = inputs["x_eval"].astype(np.float64)
    w, b = inputs["weight"], inputs["bias"]
    batch_stats = w * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + b
    message = array_mismatch(got["eval_out"], expected["eval_out"], "eval-mode output", **TOL,
                             hints=(("in eval mode use running_mean and running_var, not the "
                                     "statistics of the batch", lambda: batch_stats),))
    if message:
        return message
    return array_mismatch(got["eval_one"], expected["eval_one"],
                          "eval-mode output for a batch of one", **TOL)


def _compare_eval_keeps_state(got, expected, inputs):
    for name in STATE:
        if not np.array_equal(got["after_eval_" + name], got[name]):
            return (f"{name} changed in eval mode: update the running statistics only in "
                    "training mode (self.training)")
    return None


def _compare_custom(got, expected, inputs):
    message = _compare_running(got, expected, inputs)
    if message:
        return message + " (with momentum=0.3, eps=0.1)"
    message = array_mismatch(got["eval_out"], expected["eval_out"], "eval-mode output with "
                             "eps=0.1", **TOL)
    return message


def _inputs(part, steps=3, custom=False):
    def make(rng):
        C, N = 4, 8
        loc, scale = rng.normal(0, 2, C), rng.uniform(0.5, 2, C)
        inputs = {
            "part": part, "C": C,
            "weight": rng.uniform(0.5, 2, C).astype(np.float32),
            "bias": rng.normal(0, 1, C).astype(np.float32),
            "batches": [(loc + scale * rng.standard_normal((N, C))).astype(np.float32)
                        for _ in range(steps)],
            "dys": [rng.standard_normal((N, C)).astype(np.float32) for _ in range(steps)],
            "x_eval": (loc + scale * rng.standard_normal((5, C))).astype(np.float32),
        }
        if custom:
            inputs.update(custom=True, eps=0.1, momentum=0.3)
        return inputs
    return make


BATCHNORM1D = Exercise(
    module="04", name="BatchNorm1d", implements_bn=True, kind="class",
    run=_run_batchnorm1d, reference=_reference_batchnorm1d,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("parameters, buffers and their initial values", _inputs("init"), _compare_init),
        Check("training-mode forward", _inputs("train_forward", steps=2),
              _compare_train_forward),
        Check("backward: gradients of x, weight and bias", _inputs("backward", steps=2),
              _compare_backward),
        Check("running statistics after 3 training batches", _inputs("running"),
              _compare_running),
        Check("eval mode uses the running statistics (batch of one too)", _inputs("eval"),
              _compare_eval),
        Check("eval mode leaves the running statistics alone", _inputs("eval"),
              _compare_eval_keeps_state),
        Check("eps and momentum arguments (eps=0.1, momentum=0.3)",
              _inputs("custom", steps=2, custom=True), _compare_custom),
    ),
)

EXERCISES = (BATCHNORM1D,)
