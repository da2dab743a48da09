"""Module 04 exercises (lesson 04, torch module): a `BatchNorm1d` class compared with
`torch.nn.BatchNorm1d` scenario by scenario and then trained inside a small CNN on the digits;
a `BatchNormFunction` (`torch.autograd.Function` returning `(y, mean, var)`, with its own
backward, checked with gradcheck, saving `x` rather than `x_hat`: lesson 04 shows a Function
returning `y` that saves `x_hat`); and `module_questions`, predictions computed from the inputs.

Drivers (what runs in the learner's process): `bncourse.grading.drivers.l04_torch_module`.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch
from bncourse.grading.drivers.l04_torch_module import (STATE, run_batchnorm1d, run_function,
                                                       run_questions)
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN
from bncourse.grading.lessons.l02_forward import question_exercise

__all__ = ["EXERCISES", "CNN_ACCURACY"]

MODULE = "04"
NOTEBOOK = "04_torch_module_exercises.ipynb"
REQUIRED = True  # for the certificate

# The test accuracy the learner's BatchNorm1d must reach inside the grader's small CNN
# (the solution reaches 0.973-0.991 over 10 grader seeds with these settings, 200 steps in
# about 0.8 s; 0.973-0.996 at 300 steps: 200 keep in-notebook feedback under 2 s).
CNN_ACCURACY = 0.95


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


def _cnn_inputs(rng):
    from bncourse.data import load_digits

    data = load_digits()
    return {"part": "train_cnn", "C": 32, "seed": int(rng.integers(1000)),
            "x_train": data.x_train.numpy(), "y_train": data.y_train.numpy(),
            "x_test": data.x_test.numpy(), "y_test": data.y_test.numpy(),
            "steps": 200, "batch_size": 64, "lr": 0.05}


def _compare_cnn(got, expected, inputs):
    if not np.isfinite(got["loss"]):
        return ("training diverged (the loss is not finite): check the forward in training "
                "mode and that eps is inside the square root")
    if not got["eval_batch_independent"]:
        return ("in eval mode the output for one digit depends on the rest of the batch: eval "
                "mode must use running_mean and running_var")
    if got["accuracy"] < CNN_ACCURACY:
        return (f"test accuracy {got['accuracy']:.3f} after {inputs['steps']} steps, below "
                f"{CNN_ACCURACY:g} (torch.nn.BatchNorm1d reaches {expected['accuracy']:.3f}): "
                "check the running statistics, which eval mode uses")
    return None


BATCHNORM1D = Exercise(
    module="04", name="BatchNorm1d", implements_bn=True, kind="class",
    run=run_batchnorm1d, reference=_reference_batchnorm1d,
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
        Check(f"plugged into a small CNN and trained on the digits: test accuracy >= "
              f"{CNN_ACCURACY:g}", _cnn_inputs, _compare_cnn, points=2),
    ),
)



# --- BatchNormFunction --------------------------------------------------------------------

def _reference_function():
    from bncourse.nn import BatchNormFunction

    return BatchNormFunction


def _stats(inputs):
    x = inputs["x"]
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes), x.var(axis=axes, ddof=1), axes


def _compare_function_forward(got, expected, inputs):
    mean, var, unbiased, _ = _stats(inputs)
    message = array_mismatch(got["y"], expected["y"], "y", rtol=1e-7, atol=1e-9)
    if message:
        return message
    message = array_mismatch(got["mean"], expected["mean"], "mean", rtol=1e-7, atol=1e-9,
                             shape_hints=((f"mean has one value per channel, shape "
                                           f"{mean.shape}", lambda shape: True),))
    if message:
        return message
    return array_mismatch(got["var"], expected["var"], "var", rtol=1e-7, atol=1e-9,
                          hints=(("return the biased batch variance, the one that normalised "
                                  "the batch (the module makes it unbiased for running_var)",
                                  lambda: unbiased),))


def _compare_function_backward(got, expected, inputs):
    message = _compare_function_forward(got, expected, inputs)
    if message:
        return message
    x, dy = inputs["x"], inputs["dy"]
    _, var, _, axes = _stats(inputs)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    s = (var + inputs["eps"]) ** -0.5
    hints = {"dx": (("dx must include the paths through the batch mean and variance, not only "
                     "dy * weight * inv_std",
                     lambda: dy * (inputs["weight"] * s).reshape(shape)),
                    ("backward returns the gradients in the order of forward's inputs: "
                     "(dx, dweight, dbias, None for eps)", lambda: expected["dweight"])),
             "dweight": (("dweight = sum(dy * x_hat), dbias = sum(dy): swapped?",
                          lambda: expected["dbias"]),),
             "dbias": (("dweight = sum(dy * x_hat), dbias = sum(dy): swapped?",
                        lambda: expected["dweight"]),)}
    for part in ("dx", "dweight", "dbias"):
        message = array_mismatch(got[part], expected[part], f"the gradient {part}", rtol=1e-6,
                                 atol=1e-9, hints=hints[part])
        if message:
            return message
    return None


def _compare_gradcheck(got, expected, inputs):
    if not got["gradcheck"]:
        return ("torch.autograd.gradcheck fails in float64: your backward does not match "
                "finite differences of your forward (check each returned gradient)")
    return None


def _compare_own_backward(got, expected, inputs):
    if not got["own"]:
        return (f"y.grad_fn is {got['grad_fn']}, not your Function's backward: compute y from "
                "x inside forward (under the Function, autograd does not record it) and write "
                "backward yourself")
    if got["stats_differentiable"]:
        return ("mean and var require grad: mark them with ctx.mark_non_differentiable(mean, "
                "var); only y has a gradient")
    return _compare_function_forward(got, expected, inputs)


def _compare_saved(got, expected, inputs):
    if got["extra_full_size"] > expected["extra_full_size"]:
        return (f"forward saves {got['extra_full_size']} new tensor(s) as large as x for "
                "backward: save x itself (it exists already) with the per-channel mean and "
                "inv_std, and recompute x_hat in backward")
    return None


def _function_inputs(part, shape=(4, 3, 2, 2), eps=1e-5):
    def make(rng):
        C = shape[1]
        loc = rng.normal(0, 2, C).reshape((1, -1) + (1,) * (len(shape) - 2))
        return {"part": part, "x": loc + rng.uniform(0.5, 2) * rng.standard_normal(shape),
                "weight": rng.uniform(0.5, 2, C), "bias": rng.normal(0, 1, C),
                "dy": rng.standard_normal(shape), "eps": eps}
    return make


BATCHNORM_FUNCTION = Exercise(
    module="04", name="BatchNormFunction", implements_bn=True, kind="class",
    run=run_function, reference=_reference_function, forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("forward: (y, mean, var) for (N, C, H, W)", _function_inputs("forward"),
              _compare_function_forward),
        Check("backward: dx, dweight, dbias for (N, C), dense dy",
              _function_inputs("backward", (8, 5)), _compare_function_backward),
        Check("backward for (N, C, L)", _function_inputs("backward", (4, 3, 5)),
              _compare_function_backward),
        Check("torch.autograd.gradcheck passes (float64)", _function_inputs("gradcheck", (5, 2, 3)),
              _compare_gradcheck),
        Check("y.grad_fn is your backward; mean and var are not differentiable",
              _function_inputs("own_backward"), _compare_own_backward),
        Check("saves x, not a new full-size x_hat", _function_inputs("saved", (6, 3, 4, 4)),
              _compare_saved),
        Check("eps=0.1 is used", _function_inputs("backward", (6, 3), eps=0.1),
              _compare_function_backward),
    ),
)

# --- module_questions ---------------------------------------------------------------------


def _step_data(rng):
    C, N = int(rng.integers(2, 5)), int(rng.integers(4, 12))
    return {"running_var": rng.uniform(0.5, 2, C), "batch": rng.normal(0, 2, (N, C)),
            "momentum": float(rng.choice([0.1, 0.2, 0.3]))}


def _cma_data(rng):
    K, N, C = int(rng.integers(3, 7)), 8, int(rng.integers(2, 4))
    return {"batches": rng.normal(rng.normal(0, 3), 1.5, (K, N, C))}


def _ema(batches, momentum=0.1):
    running = np.zeros(batches.shape[2])
    for b in batches:
        running = (1 - momentum) * running + momentum * b.mean(0)
    return running


def _eval_data(rng):
    C = int(rng.integers(2, 6))
    return {"x": rng.normal(0, 2, C), "running_mean": rng.normal(0, 1, C),
            "running_var": rng.uniform(0.02, 0.2, C), "weight": rng.uniform(0.5, 2, C),
            "bias": rng.normal(0, 1, C), "eps": 0.05}


MODULE_QUESTIONS = {
    "running_var_after_step": (
        "running_var after one training step on `batch` (N, C) with this momentum",
        _step_data,
        lambda d: (1 - d["momentum"]) * d["running_var"] + d["momentum"] * d["batch"].var(0, ddof=1),
        (("running_var stores the unbiased batch variance (divide by N − 1)",
          lambda d: (1 - d["momentum"]) * d["running_var"] + d["momentum"] * d["batch"].var(0)),
         ("torch's momentum weighs the new batch: (1 − m) * running + m * batch",
          lambda d: d["momentum"] * d["running_var"] + (1 - d["momentum"]) * d["batch"].var(0, ddof=1))),
        1e-6),
    "running_mean_cumulative": (
        "running_mean of a fresh BatchNorm1d(momentum=None) after the K batches (K, N, C)",
        _cma_data, lambda d: d["batches"].mean(axis=(0, 1)),
        (("momentum=None is a cumulative average (the k-th batch weighs 1/k), not the "
          "exponential one of momentum=0.1", lambda d: _ema(d["batches"])),),
        1e-6),
    "batch_size_from_ratio": (
        "a hand-written BN stores the biased batch variance in running_var; its eval output is "
        "`ratio` times torch's: the batch size M it was trained with",
        lambda rng: {"ratio": float(np.sqrt((M := int(rng.integers(2, 33))) / (M - 1)))},
        lambda d: d["ratio"]**2 / (d["ratio"]**2 - 1),
        (("the output scales as 1 / sqrt(running_var): biased / unbiased = (M − 1) / M, so "
          "ratio = sqrt(M / (M − 1)); solve for M",
          lambda d: d["ratio"] / (d["ratio"] - 1)),),
        1e-6),
    "eval_output": (
        "the eval-mode output for one sample x (C,)", _eval_data,
        lambda d: d["weight"] * (d["x"] - d["running_mean"]) / np.sqrt(d["running_var"] + d["eps"])
        + d["bias"],
        (("eps goes inside the square root",
          lambda d: d["weight"] * (d["x"] - d["running_mean"]) / (np.sqrt(d["running_var"])
                                                                  + d["eps"]) + d["bias"]),),
        1e-6),
}

MODULE_QUESTIONS_EXERCISE = question_exercise("04", "module_questions", MODULE_QUESTIONS,
                                              IMPLEMENT_BN_FORBIDDEN, run_questions)

EXERCISES = (BATCHNORM1D, BATCHNORM_FUNCTION, MODULE_QUESTIONS_EXERCISE)
