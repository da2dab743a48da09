"""Module 12 (the capstone): batch normalization of padded variable-length sequences.

The learner writes `masked_batchnorm_forward` and `masked_batchnorm_backward` (NumPy), a torch
module `MaskedBatchNorm1d` (training, running statistics, eval, state_dict), and
`train_and_predict`, a small training run that must reach a stated accuracy. The hidden checks
use masks with an all-padded sequence and sequences of length one, and padded positions that
hold arbitrary values (a real collate function may leave anything there). References:
`bncourse.nn.masked` (float64), and for the training run the labels the grader keeps.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch, fmt
from bncourse.grading.drivers.l12_capstone import (run_backward, run_forward, run_module,
                                                   run_training)
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN

__all__ = ["EXERCISES", "TARGET_ACCURACY"]

MODULE = "12"
NOTEBOOK = "12_capstone_exercises.ipynb"
REQUIRED = True  # for the certificate

MASKED_FORBIDDEN = IMPLEMENT_BN_FORBIDDEN + (
    "bncourse.nn.masked.masked_batch_norm",
    "bncourse.nn.masked.MaskedBatchNorm1d.forward",
    "bncourse.nn.masked_batch_norm",
)
TARGET_ACCURACY = 0.85  # the training run's pass mark (the reference reaches about 0.93)

# --- inputs ------------------------------------------------------------------------------------


def _lengths(rng, n, max_length, edge):
    lengths = rng.integers(2, max_length + 1, size=n)
    if edge:  # an all-padded sequence and a sequence of length one
        lengths[0], lengths[1] = 0, 1
    lengths[-1] = max_length  # the batch is padded to its longest sequence
    return lengths


def _padded(rng, shape, dtype=np.float64, edge=False, garbage=False):
    n, c, length = shape
    lengths = _lengths(rng, n, length, edge)
    mask = np.arange(length)[None, :] < lengths[:, None]
    x = rng.uniform(-2, 6) + rng.uniform(0.5, 3) * rng.standard_normal(shape)
    # Padding is 0 in most collates; `garbage` fills it with large values the statistics must
    # never see.
    fill = rng.uniform(50, 100, size=shape) if garbage else np.zeros(shape)
    x = np.where(mask[:, None, :], x, fill)
    return x.astype(dtype), mask


def _affine(rng, c, dtype):
    return (rng.uniform(0.5, 2.0, size=c).astype(dtype),
            rng.uniform(-1.0, 1.0, size=c).astype(dtype))


def _forward_inputs(shape, dtype=np.float64, edge=False, garbage=False, eps=1e-5):
    def make(rng):
        x, mask = _padded(rng, shape, dtype, edge, garbage)
        gamma, beta = _affine(rng, shape[1], dtype)
        return {"x": x, "mask": mask, "gamma": gamma, "beta": beta, "eps": eps}
    return make


def _backward_inputs(shape, dtype=np.float64, edge=False, garbage=False):
    def make(rng):
        inputs = _forward_inputs(shape, dtype, edge, garbage)(rng)
        inputs["dout"] = rng.standard_normal(shape).astype(dtype)
        return inputs
    return make


# --- references (float64 autograd through bncourse.nn.masked) -----------------------------------


def _torch_forward(x, mask, gamma, beta, eps, requires_grad=False):
    import torch

    from bncourse.nn.masked import masked_batch_norm

    tensors = [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)
               for a in (x, gamma, beta)]
    out = masked_batch_norm(tensors[0], torch.from_numpy(np.asarray(mask)), None, None,
                            tensors[1], tensors[2], training=True, eps=eps)
    return out, tensors


def reference_masked_batchnorm_forward(x, mask, gamma, beta, eps=1e-5):
    out, _ = _torch_forward(x, mask, gamma, beta, eps)
    return out.detach().numpy().astype(x.dtype)


def reference_masked_batchnorm_backward(dout, x, mask, gamma, eps=1e-5):
    import torch

    out, (xt, gt, bt) = _torch_forward(x, mask, gamma, np.zeros_like(gamma), eps, True)
    out.backward(torch.from_numpy(np.asarray(dout, dtype=np.float64)))
    return tuple(t.grad.numpy().astype(x.dtype) for t in (xt, gt, bt))


def _reference_module():
    from bncourse.nn.masked import MaskedBatchNorm1d

    return MaskedBatchNorm1d


def reference_train_and_predict(x_train, mask_train, y_train, x_test, mask_test):
    import torch

    from bncourse.cases.capstone import (recalibrate_sequence_model,
                                         train_sequence_classifier)
    from bncourse.data.sequences import PaddedSequences
    from bncourse.nn.masked import MaskedBatchNorm1d

    train = PaddedSequences(x_train, mask_train, y_train, mask_train.sum(1))
    test = PaddedSequences(x_test, mask_test, torch.zeros(len(x_test), dtype=torch.long),
                           mask_test.sum(1))
    history = train_sequence_classifier(MaskedBatchNorm1d, train, test, steps=300,
                                        eval_every=300)
    model = recalibrate_sequence_model(history.model, train)
    with torch.no_grad():
        return model(x_test, mask_test).argmax(1)


# --- what typical mistakes compute ------------------------------------------------------------


def _stats(x, mask, counted="real"):
    m = mask[:, None, :].astype(np.float64)
    x = x.astype(np.float64)
    if counted == "all":  # padding counted
        return x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    count = m.size if counted == "NL" else m.sum()  # "NL": sums over real values / (N * L)
    mean = (x * m).sum(axis=(0, 2)) / count
    var = (((x - mean[None, :, None]) * m) ** 2).sum(axis=(0, 2)) / count
    return mean, var


def _normalise(x, mask, gamma, beta, eps, mean, var, mask_output=True):
    c = (1, -1, 1)
    out = (gamma.reshape(c) * (x.astype(np.float64) - mean.reshape(c)) / np.sqrt(var.reshape(c)
                                                                                 + eps)
           + beta.reshape(c))
    return out * mask[:, None, :] if mask_output else out


def _tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-7, atol=1e-9)


def _forward_hints(inputs):
    x, mask, gamma, beta, eps = (inputs[k] for k in ("x", "mask", "gamma", "beta", "eps"))
    count = mask.sum()
    mean, var = _stats(x, mask)
    mean_all, var_all = _stats(x, mask, "all")
    mean_nl, var_nl = _stats(x, mask, "NL")
    unmasked = _normalise(x, mask, gamma, beta, eps, mean, var, mask_output=False)
    beta_at_padding = np.where(mask[:, None, :], unmasked, beta.reshape(1, -1, 1))
    return (
        ("padded positions entered the statistics: sum only over the real positions (multiply "
         "by the mask) and divide by the number of real positions",
         lambda: _normalise(x, mask, gamma, beta, eps, mean_all, var_all)),
        ("the statistics must skip the padding, not only the output: masking the output "
         "afterwards leaves mean and variance contaminated",
         lambda: _normalise(x, mask, gamma, beta, eps, mean_all, var_all)),
        ("divide by the number of real positions per channel, not by N * L",
         lambda: _normalise(x, mask, gamma, beta, eps, mean_nl, var_nl)),
        ("use the biased variance (divide by the count M, not M - 1) to normalise",
         lambda: _normalise(x, mask, gamma, beta, eps, mean, var * count / (count - 1))),
        ("padded positions of the output must be 0", lambda: unmasked),
        ("padded positions of the output must be 0 (beta is added there too: mask the output "
         "last)", lambda: beta_at_padding),
    )


def _compare_forward(got, expected, inputs):
    message = array_mismatch(got["out"], expected["out"], "out", **_tolerance(inputs["x"].dtype),
                             dtype=inputs["x"].dtype, hints=_forward_hints(inputs))
    if message:
        return message
    if not got["x_unchanged"]:
        return "masked_batchnorm_forward changed its input x in place; compute new arrays"
    return None


def _dx_formula(inputs, divisor=None, sign=-1.0):
    """dx = gamma s (dout - mean(dout) - x_hat mean(dout x_hat)) at real positions, 0 elsewhere,
    means over the real positions; `divisor` replaces their count M (a typical mistake), `sign`
    the sign of the x_hat term."""
    x, mask, gamma, dout, eps = (inputs[k] for k in ("x", "mask", "gamma", "dout", "eps"))
    m = mask[:, None, :].astype(np.float64)
    mean, var = _stats(x, mask)
    c = (1, -1, 1)
    s = 1 / np.sqrt(var + eps)
    x_hat = (x.astype(np.float64) - mean.reshape(c)) * s.reshape(c) * m
    g = dout.astype(np.float64) * m
    count = divisor or m.sum()
    dx = gamma.reshape(c) * s.reshape(c) * (
        g - g.sum(axis=(0, 2)).reshape(c) / count
        + sign * x_hat * (g * x_hat).sum(axis=(0, 2)).reshape(c) / count)
    return dx * m


def _compare_backward(got, expected, inputs):
    x, mask, dout = inputs["x"], inputs["mask"], inputs["dout"]
    tol = _tolerance(x.dtype)
    dx = got["dx"]
    if dx.shape == x.shape and np.any(dx[~np.broadcast_to(mask[:, None, :], x.shape)] != 0):
        return ("dx is not 0 at padded positions: padded values never reach the output, so "
                "their gradient is exactly 0 (multiply by the mask)")
    if (got["dgamma"].shape == got["dbeta"].shape == expected["dgamma"].shape
            and np.allclose(got["dgamma"], expected["dbeta"], **tol)
            and np.allclose(got["dbeta"], expected["dgamma"], **tol)
            and not np.allclose(expected["dgamma"], expected["dbeta"], **tol)):
        return "dgamma and dbeta are swapped: return (dx, dgamma, dbeta) in that order"
    m = mask[:, None, :]
    mean, var = _stats(x, mask)
    x_hat = (x.astype(np.float64) - mean[None, :, None]) / np.sqrt(var[None, :, None]
                                                                    + inputs["eps"]) * m
    hints = {
        "dbeta": (("sum dout over the real positions only", lambda: dout.sum(axis=(0, 2))),),
        "dgamma": (("dgamma sums dout * x_hat over the real positions only",
                    lambda: (dout * np.where(m, x_hat, (x - mean[None, :, None])
                                             / np.sqrt(var[None, :, None] + inputs["eps"])))
                    .sum(axis=(0, 2))),),
        "dx": (("the means in dx's formula run over the M real values per channel: divide by "
                "M, not by N * L", lambda: _dx_formula(inputs, divisor=x.shape[0] * x.shape[2])),
               ("check the sign of the x_hat term: dx = gamma s (dout - mean(dout) - x_hat "
                "mean(dout x_hat))", lambda: _dx_formula(inputs, sign=+1.0))),
    }
    for key in ("dbeta", "dgamma", "dx"):
        message = array_mismatch(got[key], expected[key], key, **tol, dtype=x.dtype,
                                 hints=hints[key])
        if message:
            return message
    return None


def _module_inputs(steps=3, grad=False, eval_=False, momentum=0.1, garbage=False):
    def make(rng):
        c, n, length = int(rng.integers(3, 6)), int(rng.integers(6, 10)), int(rng.integers(5, 9))
        inputs = {"C": c, "momentum": momentum, "steps": steps, "grad": grad}
        inputs["weight"], inputs["bias"] = _affine(rng, c, np.float64)
        for step in range(steps):
            inputs[f"x{step}"], inputs[f"mask{step}"] = _padded(
                rng, (n, c, length), np.float32, edge=step == 0, garbage=garbage)
        if grad:
            inputs["dout"] = rng.standard_normal((n, c, length)).astype(np.float32)
        if eval_:
            inputs["x_eval"], inputs["mask_eval"] = _padded(rng, (n, c, length), np.float32,
                                                            edge=True, garbage=garbage)
        return inputs
    return make


def _running_hints(inputs):
    """What the running statistics would be with the biased variance, or with padding counted."""
    momentum, steps = inputs["momentum"], inputs["steps"]
    c = inputs["C"]
    biased_var, all_mean, all_var = np.ones(c), np.zeros(c), np.ones(c)
    for step in range(steps):
        x, mask = inputs[f"x{step}"], inputs[f"mask{step}"]
        weight = 1.0 / (step + 1) if momentum is None else momentum
        _, var = _stats(x, mask)
        mean_a, var_a = _stats(x, mask, "all")
        total = x.shape[0] * x.shape[2]
        biased_var = (1 - weight) * biased_var + weight * var
        all_mean = (1 - weight) * all_mean + weight * mean_a
        all_var = (1 - weight) * all_var + weight * var_a * total / (total - 1)
    padding = "the running statistics must skip the padding too (the same mask as the batch's)"
    return {"running_mean": ((padding, lambda: all_mean),),
            "running_var": (("running_var stores the unbiased variance, var * M / (M - 1), M the "
                             "number of real values", lambda: biased_var),
                            (padding, lambda: all_var))}


def _compare_module(parts):
    def compare(got, expected, inputs):
        tol = dict(rtol=1e-4, atol=1e-5)
        if "keys" in parts and got["keys"] != expected["keys"]:
            return (f"state_dict keys are {got['keys']!r}, expected {expected['keys']!r} (the "
                    f"same names as torch.nn.BatchNorm1d, so checkpoints load both ways)")
        for step in range(inputs["steps"]):
            if "out" not in parts:
                break
            message = array_mismatch(got[f"out{step}"], expected[f"out{step}"],
                                     f"the training-mode output of step {step + 1}", **tol,
                                     hints=_forward_hints({
                                         "x": inputs[f"x{step}"], "mask": inputs[f"mask{step}"],
                                         "gamma": inputs["weight"], "beta": inputs["bias"],
                                         "eps": 1e-5}))
            if message:
                return message
        if "running" in parts:
            for name in ("running_mean", "running_var"):
                hints = _running_hints(inputs)[name]
                message = array_mismatch(got[name], expected[name], name, **tol, hints=hints)
                if message:
                    return message
            if int(got["num_batches_tracked"]) != int(expected["num_batches_tracked"]):
                return (f"num_batches_tracked is {int(got['num_batches_tracked'])}, expected "
                        f"{int(expected['num_batches_tracked'])} (one per training-mode forward)")
        if "eval" in parts:
            message = array_mismatch(got["out_eval"], expected["out_eval"], "the eval-mode "
                                     "output", **tol)
            if message:
                return message + ". Hint: eval mode normalises with running_mean and " \
                                 "running_var, and padded positions are still 0"
            for name in ("running_mean", "running_var"):
                if not np.array_equal(got[name + "_after_eval"], got[name]):
                    return f"eval mode changed {name}: running statistics change only in training"
        if "grad" in parts:
            for key, what in (("dx", "the input gradient"), ("dweight", "weight.grad"),
                              ("dbias", "bias.grad")):
                message = array_mismatch(got[key], expected[key], what, **tol)
                if message:
                    if key == "dx":
                        pad = ~inputs[f"mask{inputs['steps'] - 1}"][:, None, :]
                        if np.any(got["dx"] * pad != 0):
                            return message + ". Hint: no gradient may reach padded positions"
                    return message
        return None
    return compare


def _training_inputs():
    def make(rng):
        from bncourse.data.sequences import sequence_split

        seed = int(rng.integers(2**31))
        train, test = sequence_split(seed=seed)
        return {"data_seed": seed, "x_train": train.x.numpy(), "mask_train": train.mask.numpy(),
                "y_train": train.y.numpy(), "x_test": test.x.numpy(),
                "mask_test": test.mask.numpy()}
    return make


def _compare_training(got, expected, inputs):
    from bncourse.data.sequences import sequence_split

    # The test labels never go to the learner's process: the grader regenerates them.
    _, test = sequence_split(seed=inputs["data_seed"])
    labels = test.y.numpy()
    accuracy = float((got["predictions"] == labels).mean())
    if accuracy >= TARGET_ACCURACY:
        return None
    reference = float((expected["predictions"] == labels).mean())
    return (f"test accuracy {fmt(accuracy)}, the target is {TARGET_ACCURACY} (the reference "
            f"reaches {fmt(reference)}). Hint: are the running statistics those of the final "
            f"weights? Lesson 12 section 3 shows the eval-mode accuracy swinging from one "
            f"evaluation to the next, and what fixes it")


# --- the exercises ------------------------------------------------------------------------------

FORWARD = Exercise(
    module="12", name="masked_batchnorm_forward", implements_bn=True, kind="function",
    run=run_forward, reference=lambda: reference_masked_batchnorm_forward,
    forbidden=MASKED_FORBIDDEN,
    checks=(
        Check("variable lengths, float64", _forward_inputs((6, 4, 9)), _compare_forward),
        Check("an all-padded sequence and one of length one", _forward_inputs((5, 3, 7),
              edge=True), _compare_forward),
        Check("padded positions hold arbitrary values", _forward_inputs((6, 3, 8), garbage=True),
              _compare_forward, points=2),
        Check("float32 keeps float32", _forward_inputs((8, 3, 6), np.float32), _compare_forward),
        Check("eps=0.1 is used", _forward_inputs((6, 2, 5), eps=0.1), _compare_forward),
    ),
)

BACKWARD = Exercise(
    module="12", name="masked_batchnorm_backward", implements_bn=True, kind="function",
    run=run_backward, reference=lambda: reference_masked_batchnorm_backward,
    forbidden=MASKED_FORBIDDEN,
    checks=(
        Check("variable lengths, float64", _backward_inputs((6, 3, 8)), _compare_backward),
        Check("an all-padded sequence and one of length one", _backward_inputs((5, 3, 6),
              edge=True), _compare_backward),
        Check("padded positions hold arbitrary values: dx is 0 there",
              _backward_inputs((6, 2, 7), garbage=True), _compare_backward, points=2),
        Check("float32", _backward_inputs((8, 3, 5), np.float32), _compare_backward),
    ),
)

MODULE_EXERCISE = Exercise(
    module="12", name="MaskedBatchNorm1d", implements_bn=True, kind="class",
    run=run_module, reference=_reference_module, forbidden=MASKED_FORBIDDEN,
    checks=(
        Check("state_dict keys as torch.nn.BatchNorm1d's", _module_inputs(steps=1),
              _compare_module(("keys",))),
        Check("training-mode forward, padding skipped", _module_inputs(steps=2, garbage=True),
              _compare_module(("out",))),
        Check("running statistics after three steps", _module_inputs(steps=3),
              _compare_module(("running",)), points=2),
        Check("momentum=None: a cumulative average", _module_inputs(steps=3, momentum=None),
              _compare_module(("running",))),
        Check("eval mode: running statistics, padding 0", _module_inputs(steps=2, eval_=True),
              _compare_module(("eval",))),
        Check("gradients: none reaches the padding", _module_inputs(steps=1, grad=True,
              garbage=True), _compare_module(("grad",)), points=2),
    ),
)

TRAINING = Exercise(
    module="12", name="train_and_predict", implements_bn=True, kind="function",
    run=run_training, reference=lambda: reference_train_and_predict,
    checks=(
        Check(f"a model with your MaskedBatchNorm1d reaches {TARGET_ACCURACY:.0%} test accuracy",
              _training_inputs(), _compare_training, points=3),
    ),
)

EXERCISES = (FORWARD, BACKWARD, MODULE_EXERCISE, TRAINING)
