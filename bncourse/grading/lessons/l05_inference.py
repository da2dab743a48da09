"""Module 05 exercises (lesson 05, inference and deployment): `batchnorm_eval` (NumPy),
`fold_conv_bn` (fold an eval-mode BatchNorm2d into the preceding Conv2d: lesson 05 derives the
fold for a Linear and uses the package for convolutions), `recalibrate_bn` (recompute running
statistics as a cumulative average with only the BN layers in training mode, so dropout stays
off), and `inference_questions`, predictions computed from the inputs.

Drivers (what runs in the learner's process): `bncourse.grading.drivers.l05_inference`.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch
from bncourse.grading.drivers.l05_inference import (batchnorms, build_conv_bn, build_model,
                                                    run_batchnorm_eval, run_fold,
                                                    run_questions, run_recalibrate)
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, _per_channel
from bncourse.grading.lessons.l02_forward import question_exercise

__all__ = ["EXERCISES", "reference_fold_conv_bn", "reference_recalibrate_bn"]

MODULE = "05"
NOTEBOOK = "05_inference_exercises.ipynb"
REQUIRED = True  # for the certificate

FOLD_FORBIDDEN = (
    "torch.nn.utils.fusion.fuse_conv_bn_eval",
    "torch.nn.utils.fusion.fuse_conv_bn_weights",
    "torch.nn.utils.fuse_conv_bn_eval",
    "torch.nn.utils.fuse_conv_bn_weights",
    "bncourse.nn.fold_batchnorm",
    "bncourse.nn.fold.fold_batchnorm",
)
RECALIBRATE_FORBIDDEN = ("bncourse.nn.recalibrate_batchnorm",
                         "bncourse.nn.fold.recalibrate_batchnorm")

# --- batchnorm_eval -----------------------------------------------------------------------


def _reference_batchnorm_eval():
    from bncourse.reference import batchnorm_inference

    return batchnorm_inference


def _compare_batchnorm_eval(got, expected, inputs):
    x, eps = inputs["x"], inputs["eps"]
    nd = x.ndim
    g, b, rm, rv = (_per_channel(inputs[k], nd) for k in ("gamma", "beta", "running_mean",
                                                          "running_var"))
    axes = (0,) + tuple(range(2, nd))
    tol = dict(rtol=1e-4, atol=1e-5) if x.dtype == np.float32 else dict(rtol=1e-7, atol=1e-9)
    hints = (
        ("in eval mode use running_mean and running_var, not the batch's statistics",
         lambda: g * (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True)
                                                                  + eps) + b),
        ("eps goes inside the square root: (x − running_mean) / sqrt(running_var + eps)",
         lambda: g * (x - rm) / (np.sqrt(rv) + eps) + b),
        ("divide by the standard deviation sqrt(running_var + eps), not by the variance",
         lambda: g * (x - rm) / (rv + eps) + b),
    )
    return array_mismatch(got["out"], expected["out"], "out", **tol, dtype=x.dtype, hints=hints,
                          shape_hints=((f"the output has the shape of x, {x.shape}: reshape "
                                        "the (C,) vectors to (1, C, 1, ...) to broadcast",
                                        lambda shape: True),))


def _eval_inputs(shape, dtype=np.float64, eps=1e-5):
    def make(rng):
        C = shape[1]
        x = rng.normal(0, 2, shape)
        return {"x": x.astype(dtype), "gamma": rng.uniform(0.5, 2, C).astype(dtype),
                "beta": rng.normal(0, 1, C).astype(dtype),
                "running_mean": rng.normal(0, 1, C).astype(dtype),
                "running_var": rng.uniform(0.05, 0.5 if eps != 1e-5 else 3, C).astype(dtype),
                "eps": eps}
    return make


BATCHNORM_EVAL = Exercise(
    module="05", name="batchnorm_eval", implements_bn=True, kind="function",
    run=run_batchnorm_eval, reference=_reference_batchnorm_eval,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64", _eval_inputs((8, 4)), _compare_batchnorm_eval),
        Check("(N, C, H, W) float64", _eval_inputs((3, 4, 2, 5)), _compare_batchnorm_eval),
        Check("a batch of one, (1, C)", _eval_inputs((1, 6)), _compare_batchnorm_eval),
        Check("float32 keeps float32", _eval_inputs((5, 3), np.float32),
              _compare_batchnorm_eval),
        Check("eps=0.1 is used, inside the square root", _eval_inputs((6, 3), eps=0.1),
              _compare_batchnorm_eval),
    ),
)

# --- fold_conv_bn -------------------------------------------------------------------------


def reference_fold_conv_bn(conv, bn):
    """The grader's fold: W' = W * s[:, None, None, None], b' = (b − running_mean) * s + beta,
    with s = gamma / sqrt(running_var + eps); the convolution's geometry is kept."""
    import torch

    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                 stride=conv.stride, padding=conv.padding,
                                 dilation=conv.dilation, groups=conv.groups, bias=True)
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return folded


def _conv(inputs, W=None, b=None):
    import torch
    import torch.nn.functional as F

    c = inputs["conv"]
    W = inputs["W"] if W is None else W
    b = inputs["b"] if b is None else b
    with torch.no_grad():
        z = F.conv2d(torch.from_numpy(inputs["x"]).double(), torch.from_numpy(W).double(),
                     None if b is None else torch.from_numpy(np.asarray(b)).double(),
                     stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                     groups=c["groups"])
    return z.numpy()


def _compare_fold_output(got, expected, inputs):
    if list(got["weight_shape"]) != list(expected["weight_shape"]):
        return (f"the folded weight has shape {tuple(got['weight_shape'])}, expected "
                f"{tuple(expected['weight_shape'])} (out_channels, in_channels / groups, kH, kW)")
    if not got["has_bias"]:
        return "the folded Conv2d needs a bias (it carries beta − running_mean * scale)"
    if got["geometry"] != expected["geometry"]:
        return ("the folded convolution has stride/padding/dilation/groups "
                f"{got['geometry']}, expected {expected['geometry']}: copy them from conv")
    z = _conv(inputs)
    gamma, beta, rm, rv = (_per_channel(inputs["bn_" + k].astype(np.float64), 4)
                           for k in ("weight", "bias", "running_mean", "running_var"))
    eps = inputs["eps"]
    scale = gamma / np.sqrt(rv + eps)
    zb = 0 if inputs["b"] is None else _per_channel(inputs["b"].astype(np.float64), 4)
    W = inputs["W"]
    hints = (("use the running statistics of the eval-mode BN, not the statistics of a batch",
              lambda: gamma * (z - z.mean((0, 2, 3), keepdims=True))
              / np.sqrt(z.var((0, 2, 3), keepdims=True) + eps) + beta),
             ("eps goes inside the square root: scale = gamma / sqrt(running_var + eps)",
              lambda: gamma * (z - rm) / (np.sqrt(rv) + eps) + beta),
             ("the convolution's bias goes through BN too: b' = (b − running_mean) * scale + beta",
              lambda: scale * (z - zb) + zb - rm * scale + beta),
             ("scale the output channels (axis 0 of the weight, one filter per BN channel), not "
              "the input channels", lambda: _conv(inputs, W=W * scale.reshape(1, -1, 1, 1),
                                                  b=np.zeros(W.shape[0]))
              + (beta - rm * scale) + (zb * scale)))
    return array_mismatch(got["y"], expected["y"], "folded(x) vs bn(conv(x))", rtol=1e-4,
                          atol=1e-5, hints=hints)


def _compare_fold_unchanged(got, expected, inputs):
    if got["same_object"] or not got["unchanged"]:
        return ("fold_conv_bn changed the given conv or bn (or returned the same object): "
                "build and return a new torch.nn.Conv2d")
    return _compare_fold_output(got, expected, inputs)


def _fold_inputs(bias=True, eps=1e-5, channels=(3, 4), kernel=3, stride=1, padding=1,
                 dilation=1, groups=1):
    def make(rng):
        c_in, c_out = channels
        f32 = np.float32
        return {"conv": {"in": c_in, "out": c_out, "kernel": kernel, "stride": stride,
                         "padding": padding, "dilation": dilation, "groups": groups},
                "W": rng.normal(0, 0.5, (c_out, c_in // groups, kernel, kernel)).astype(f32),
                "b": rng.normal(0, 1, c_out).astype(f32) if bias else None,
                "bn_weight": rng.uniform(0.5, 2, c_out).astype(f32),
                "bn_bias": rng.normal(0, 1, c_out).astype(f32),
                "bn_running_mean": rng.normal(0, 1, c_out).astype(f32),
                "bn_running_var": rng.uniform(0.05, 0.5 if eps != 1e-5 else 3, c_out).astype(f32),
                "eps": eps, "x": rng.normal(0, 1, (2, c_in, 7, 7)).astype(f32)}
    return make


FOLD_CONV_BN = Exercise(
    module="05", name="fold_conv_bn", kind="function",
    run=run_fold, reference=lambda: reference_fold_conv_bn, forbidden=FOLD_FORBIDDEN,
    checks=(
        Check("3x3 conv with bias: folded(x) equals bn(conv(x)) in eval mode",
              _fold_inputs(channels=(4, 4)),
              _compare_fold_output),
        Check("a conv without bias (the usual case before BN)", _fold_inputs(bias=False),
              _compare_fold_output),
        Check("eps=0.1 is used", _fold_inputs(eps=0.1, bias=False), _compare_fold_output),
        Check("stride 2, padding 2, dilation 2 are kept",
              _fold_inputs(stride=2, padding=2, dilation=2), _compare_fold_output),
        Check("a depthwise conv (groups = channels)",
              _fold_inputs(channels=(4, 4), groups=4, bias=False), _compare_fold_output),
        Check("returns a new Conv2d, leaves conv and bn unchanged",
              _fold_inputs(channels=(3, 5)),
              _compare_fold_unchanged),
    ),
)

# --- recalibrate_bn -----------------------------------------------------------------------


def reference_recalibrate_bn(model, batches):
    """The grader's recalibration: reset, cumulative average (momentum=None) with only the BN
    layers in training mode, without gradients; restore momentum; eval mode."""
    import torch

    norms = batchnorms(model)
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def _alternative(inputs, recalibrate):
    """Running statistics a mistaken recalibration would leave (computed with torch here)."""
    import torch

    model = build_model(inputs)
    recalibrate(model, [torch.from_numpy(x) for x in inputs["batches"]])
    return [(m.running_mean.detach().numpy().copy(), m.running_var.detach().numpy().copy())
            for m in batchnorms(model)]


def _bn_only_train(model):
    model.eval()
    for m in batchnorms(model):
        m.train()


def _no_reset(model, batches):
    import torch

    _bn_only_train(model)
    with torch.no_grad():
        for x in batches:
            model(x)


def _no_reset_cumulative(model, batches):
    norms = batchnorms(model)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = None
    _no_reset(model, batches)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _reset_keep_momentum(model, batches):
    for m in batchnorms(model):
        m.reset_running_stats()
    _no_reset(model, batches)


def _compare_dropout(got, expected, inputs):
    if got["dropout_forwards"] < len(inputs["batches"]):
        return (f"the model ran {got['dropout_forwards']} forward passes, expected one per "
                f"batch ({len(inputs['batches'])})")
    if got["dropout_on"]:
        return ("dropout was in training mode while the batches ran: model.train() turns on "
                "dropout too; put only the BN layers in training mode (m.train() for each)")
    return None


def _compare_recalibrated_stats(got, expected, inputs):
    if got["n_norms"] != expected["n_norms"]:
        return f"the returned model has {got['n_norms']} BatchNorm modules, expected 2"
    message = _compare_dropout(got, expected, inputs)
    if message:
        return message
    alternatives = {}

    def alt(name, i, j):
        def make():
            if name not in alternatives:
                alternatives[name] = _alternative(inputs, {
                    "no_reset": _no_reset, "no_reset_cumulative": _no_reset_cumulative,
                    "momentum": _reset_keep_momentum}[name])
            return alternatives[name][i][j]
        return make

    for i in range(expected["n_norms"]):
        for j, stat in enumerate(("running_mean", "running_var")):
            message = array_mismatch(
                got[f"{stat}_{i}"], expected[f"{stat}_{i}"], f"{stat} of BN layer {i + 1}",
                rtol=1e-4, atol=1e-5,
                hints=(("reset the running statistics first (bn.reset_running_stats())",
                        alt("no_reset", i, j)),
                       ("reset the running statistics first (bn.reset_running_stats()): "
                        "num_batches_tracked counts on from the old value",
                        alt("no_reset_cumulative", i, j)),
                       ("for a cumulative average over the batches set bn.momentum = None "
                        "while recalibrating", alt("momentum", i, j))))
            if message:
                return message
        if got[f"num_batches_tracked_{i}"] != expected[f"num_batches_tracked_{i}"]:
            return (f"num_batches_tracked of BN layer {i + 1} is "
                    f"{got[f'num_batches_tracked_{i}']}, expected "
                    f"{expected[f'num_batches_tracked_{i}']} (one per batch after a reset)")
    return None


def _compare_momentum(got, expected, inputs):
    if [round(m, 6) for m in got["momenta"]] != [round(m, 6) for m in expected["momenta"]]:
        shown = ["None" if m == -1 else f"{m:g}" for m in got["momenta"]]
        return (f"momentum after recalibration is {shown}, expected [0.1, 0.3]: restore each "
                "BN's original momentum")
    return None


def _compare_eval_mode(got, expected, inputs):
    if any(got["training"]):
        return ("a module is left in training mode: put the model back in eval mode "
                "(model.eval()) before returning it")
    return None


def _compare_weights(got, expected, inputs):
    if not got["weights_unchanged"]:
        return "the weights changed: recalibration only recomputes running statistics"
    if not got["no_grads"]:
        return ("gradients were computed: run the batches under torch.no_grad(), nothing is "
                "being trained")
    return None


def _recalibrate_inputs(start_in_train=False):
    def make(rng):
        return {"model_seed": int(rng.integers(1000)), "start_in_train": start_in_train,
                "rm1": rng.normal(3, 1, 6).astype(np.float32),
                "rv1": rng.uniform(5, 9, 6).astype(np.float32),
                "rm5": rng.normal(-3, 1, 3).astype(np.float32),
                "rv5": rng.uniform(5, 9, 3).astype(np.float32),
                "w1": rng.uniform(0.5, 2, 6).astype(np.float32),
                "w5": rng.uniform(0.5, 2, 3).astype(np.float32),
                "batches": [rng.normal(1, 2, (8, 4)).astype(np.float32) for _ in range(5)]}
    return make


RECALIBRATE_BN = Exercise(
    module="05", name="recalibrate_bn", kind="function",
    run=run_recalibrate, reference=lambda: reference_recalibrate_bn,
    forbidden=RECALIBRATE_FORBIDDEN,
    checks=(
        Check("running statistics: cumulative average over the batches", _recalibrate_inputs(),
              _compare_recalibrated_stats),
        Check("dropout stays off while the batches run (only BN in training mode)",
              _recalibrate_inputs(True), _compare_dropout),
        Check("each BN's momentum restored", _recalibrate_inputs(True), _compare_momentum),
        Check("model left in eval mode", _recalibrate_inputs(True), _compare_eval_mode),
        Check("weights unchanged, no gradients", _recalibrate_inputs(), _compare_weights),
    ),
)

# --- inference_questions ------------------------------------------------------------------


def _fold_data(rng):
    C = int(rng.integers(2, 6))
    return {"b": rng.normal(0, 1, C), "gamma": rng.uniform(0.5, 2, C), "beta": rng.normal(0, 1, C),
            "running_mean": rng.normal(0, 2, C), "running_var": rng.uniform(0.02, 0.3, C),
            "eps": 0.05}


def _stale_data(rng):
    d = _fold_data(rng)
    d.pop("b")
    d["new_mean"] = d["running_mean"] + rng.normal(0, 1, len(d["gamma"]))
    return d


def _s(d):
    return d["gamma"] / np.sqrt(d["running_var"] + d["eps"])


INFERENCE_QUESTIONS = {
    "folded_bias": (
        "the bias b' of a Linear/Conv (bias b) folded with an eval-mode BN", _fold_data,
        lambda d: (d["b"] - d["running_mean"]) * _s(d) + d["beta"],
        (("the layer's bias goes through BN too: b' = (b − running_mean) * s + beta",
          lambda d: d["b"] - d["running_mean"] * _s(d) + d["beta"]),
         ("s = gamma / sqrt(running_var + eps): eps inside the square root",
          lambda d: (d["b"] - d["running_mean"]) * d["gamma"] / (np.sqrt(d["running_var"])
                                                                 + d["eps"]) + d["beta"])),
        1e-6),
    "weight_of_first_batch": (
        "the weight batch 1's mean carries in running_mean after K batches with momentum m "
        "(a BN reset before batch 1)",
        lambda rng: {"momentum": float(rng.choice([0.1, 0.2, 0.3])), "K": int(rng.integers(2, 12))},
        lambda d: d["momentum"] * (1 - d["momentum"]) ** (d["K"] - 1),
        (("batch 1 enters with weight m, then every later batch multiplies it by (1 − m)",
          lambda d: (1 - d["momentum"]) ** (d["K"] - 1)),
         ("K − 1 later batches shrink it, not K", lambda d: d["momentum"] * (1 - d["momentum"]) ** d["K"]),
         ("torch's momentum weighs the new batch, not the old running value",
          lambda d: (1 - d["momentum"]) * d["momentum"] ** (d["K"] - 1))),
        1e-6),
    "stale_output_mean": (
        "the mean of an eval-mode BN's output when its input's mean has moved to new_mean",
        _stale_data,
        lambda d: (d["new_mean"] - d["running_mean"]) * _s(d) + d["beta"],
        (("eval mode does not renormalise: the output mean is beta only if the input mean "
          "still equals running_mean", lambda d: d["beta"]),),
        1e-6),
}

INFERENCE_QUESTIONS_EXERCISE = question_exercise("05", "inference_questions",
                                                 INFERENCE_QUESTIONS, IMPLEMENT_BN_FORBIDDEN,
                                                 run_questions)

EXERCISES = (BATCHNORM_EVAL, FOLD_CONV_BN, RECALIBRATE_BN, INFERENCE_QUESTIONS_EXERCISE)
