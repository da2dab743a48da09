"""Module 08 exercises (case study 08, BN in recurrent nets): per-time-step batch statistics
(`PerStepBatchNorm`, compared with `bncourse.nn.StepwiseBatchNorm`), the BN-LSTM step
(`bn_lstm_step`, compared with `bncourse.nn.BNLSTMCell`), and three predictions.

The lesson shows the equations and the package's cells; it never shows the per-step statistics
in code, which is what the first exercise asks for.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, SubmissionError, array_mismatch, as_array
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN

__all__ = ["EXERCISES"]

MODULE = "08"
NOTEBOOK = "08_case_nlp_exercises.ipynb"
REQUIRED = True  # for the certificate

TOL = dict(rtol=1e-4, atol=2e-5)
_PACKAGE_NORM = ("bncourse.nn.stepwise.StepwiseBatchNorm.forward",
                 "bncourse.nn.stepwise.StepwiseBatchNorm.forward_sequence")
_PACKAGE_CELL = ("bncourse.nn.recurrent._LSTMCellBase.forward",
                 "bncourse.nn.recurrent._LSTMCellBase.step",
                 "bncourse.nn.recurrent.BNLSTMCell._input_term",
                 "bncourse.nn.recurrent.BNLSTMCell._recurrent_term",
                 "bncourse.nn.recurrent.BNLSTMCell._cell_output",
                 "bncourse.nn.recurrent.BNLSTMCell.input_terms",
                 "bncourse.nn.recurrent.run_cell")


# --- 08.PerStepBatchNorm ------------------------------------------------------------------

def _reference_norm():
    from bncourse.nn.stepwise import StepwiseBatchNorm

    return StepwiseBatchNorm


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


def _tensor(module, name):
    import torch

    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise SubmissionError(f"the module has no tensor attribute `{name}` (got "
                              f"{type(value).__name__})")
    return value


def _buffers(module, prefix=""):
    state = {}
    for name in ("running_mean", "running_var"):
        tensor = _tensor(module, name)
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
            result[name] = as_array(_tensor(module, name), name)
        result["bias"] = as_array(_tensor(module, "bias"), "bias")
        no_bias = _make_norm(cls, C, L, inputs, bias=False)
        result["no_bias_parameters"] = sorted(n for n, _ in no_bias.named_parameters())
        result["no_bias_is_none"] = getattr(no_bias, "bias", "missing") is None
        return result
    module = _make_norm(cls, C, L, inputs)
    with torch.no_grad():
        _tensor(module, "weight").copy_(torch.from_numpy(inputs["weight"]))
        _tensor(module, "bias").copy_(torch.from_numpy(inputs["bias"]))
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


def _simulate(inputs, rows="clamp", unbiased=True, momentum=None):
    """The running statistics a per-step BN with a given mistake would end with."""
    L, C = inputs["max_length"], inputs["C"]
    momentum = inputs.get("momentum", 0.1) if momentum is None else momentum
    mean, var = np.zeros((L, C)), np.ones((L, C))
    for t, x in enumerate(inputs["x"]):
        x = x.astype(np.float64)
        if rows == "skip" and t >= L:
            continue
        if rows == "shared":
            index = slice(None)
        elif rows == "wrap":
            index = t % L
        else:
            index = min(t, L - 1)
        mean[index] = (1 - momentum) * mean[index] + momentum * x.mean(0)
        var[index] = (1 - momentum) * var[index] + momentum * x.var(0, ddof=1 if unbiased else 0)
    return mean, var


def _compare_init(got, expected, inputs):
    for key, what, hint in (
            ("parameters", "parameters", " (weight and bias are torch.nn.Parameter)"),
            ("buffers", "buffers", " (register running_mean and running_var with "
             "self.register_buffer, one row per time step)")):
        if list(got[key]) != list(expected[key]):
            return f"{what}: got {list(got[key])}, expected {list(expected[key])}{hint}"
    if got["running_mean"].ndim == 1:
        return (f"running_mean has shape {got['running_mean'].shape}: statistics must be kept "
                f"per time step, shape (max_length, num_features)")
    for name in ("weight", "bias", "running_mean", "running_var"):
        message = array_mismatch(got[name], expected[name], f"initial {name}", **TOL)
        if message:
            return message
    if not got["no_bias_is_none"] or list(got["no_bias_parameters"]) != list(
            expected["no_bias_parameters"]):
        return ("with bias=False the module must have no shift: set self.bias = None "
                "(parameters: only weight)")
    return None


def _compare_train(got, expected, inputs):
    w, b = inputs["weight"].astype(np.float64), inputs["bias"].astype(np.float64)
    for t in range(len(inputs["x"])):
        x = inputs["x"][t].astype(np.float64)
        mu = x.mean(0)
        hints = (("normalise with the biased batch variance (divide by N, not N−1)",
                  lambda: w * (x - mu) / np.sqrt(x.var(0, ddof=1) + 1e-5) + b),
                 ("eps goes inside the square root",
                  lambda: w * (x - mu) / (x.std(0) + 1e-5) + b),
                 ("in training mode normalise with the batch statistics of step t, not the "
                  "running ones", lambda: w * x / np.sqrt(1 + 1e-5) + b))
        message = array_mismatch(got[f"train_{t}"], expected[f"train_{t}"],
                                 f"training output at step {t}", **TOL, hints=hints)
        if message:
            return message
        message = array_mismatch(got[f"grad_{t}"], expected[f"grad_{t}"],
                                 f"gradient of the input at step {t}", rtol=1e-3, atol=1e-4)
        if message:
            return message + (" (the gradient must flow through the batch mean and variance: "
                              "do not detach them)")
    return None


def _compare_running(got, expected, inputs):
    if got["running_mean_requires_grad"] or got["running_var_requires_grad"]:
        return ("the running statistics require grad: update them under torch.no_grad() "
                "(or from detached batch statistics)")
    L = inputs["max_length"]
    for name, k in (("running_mean", 0), ("running_var", 1)):
        hints = (
            ("statistics shared across steps: keep one row per time step and update only "
             "the row of step t", lambda: _simulate(inputs, "shared")[k]),
            (f"beyond max_length ({L}) update the last row (reuse rule: row min(t, max_length−1)), "
             "not row t % max_length", lambda: _simulate(inputs, "wrap")[k]),
            (f"steps t >= max_length ({L}) still update the statistics, of the last row",
             lambda: _simulate(inputs, "skip")[k]),
            ("running_var stores the unbiased variance (divide by N−1) while the "
             "normalisation uses the biased one", lambda: _simulate(inputs, unbiased=False)[k]),
            ("momentum weighs the new batch: running = (1 − momentum) * running + "
             "momentum * batch", lambda: _simulate(inputs, momentum=1 - inputs["momentum"])[k]))
        message = array_mismatch(got[name], expected[name], name, **TOL, hints=hints,
                                 shape_hints=(("statistics are kept per time step: shape "
                                               "(max_length, num_features)",
                                               lambda shape: len(shape) == 1),))
        if message:
            return message
    return None


def _compare_eval(got, expected, inputs):
    L, w, b = inputs["max_length"], inputs["weight"], inputs["bias"]
    mean, var = _simulate(inputs)
    for name in ("running_mean", "running_var"):
        if not np.array_equal(got["after_eval_" + name], got[name]):
            return (f"{name} changed in eval mode: update the running statistics only in "
                    "training mode (self.training)")
    for t, x in enumerate(inputs["x_eval"]):
        x = x.astype(np.float64)
        hints = (("in eval mode use the running statistics of step t, not the batch's",
                  lambda: w * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + b),
                 ("each step has its own running statistics: use row min(t, max_length−1)",
                  lambda: w * (x - mean[0]) / np.sqrt(var[0] + 1e-5) + b),
                 (f"beyond max_length ({L}) reuse the statistics of the last step, not of "
                  "step t % max_length",
                  lambda: w * (x - mean[t % L]) / np.sqrt(var[t % L] + 1e-5) + b))
        message = array_mismatch(got[f"eval_{t}"], expected[f"eval_{t}"],
                                 f"eval output at step {t} (max_length={L})", **TOL, hints=hints)
        if message:
            return message
    return array_mismatch(got["eval_one"], expected["eval_one"],
                          "eval output for a batch of one", **TOL)


def _norm_inputs(part, custom=False):
    def make(rng):
        C, N, L = 3, 6, 4
        T = L + 3  # the sequence is longer than max_length: the reuse rule is tested
        loc = rng.normal(0, 2, (T + 2, C))  # every step its own distribution
        scale = rng.uniform(0.5, 2, (T + 2, C))
        inputs = {
            "part": part, "C": C, "max_length": L, "momentum": 0.1, "eps": 1e-5,
            "weight": rng.uniform(0.5, 2, C).astype(np.float32),
            "bias": rng.normal(0, 1, C).astype(np.float32),
            "x": [(loc[t] + scale[t] * rng.standard_normal((N, C))).astype(np.float32)
                  for t in range(T)],
            "dy": [rng.standard_normal((N, C)).astype(np.float32) for _ in range(T)],
            "x_eval": [(loc[t] + scale[t] * rng.standard_normal((5, C))).astype(np.float32)
                       for t in range(T + 2)],
        }
        if custom:
            inputs["momentum"] = 0.3
        return inputs
    return make


PER_STEP = Exercise(
    module="08", name="PerStepBatchNorm", kind="class",
    run=_run_norm, reference=_reference_norm,
    forbidden=IMPLEMENT_BN_FORBIDDEN + _PACKAGE_NORM,
    checks=(
        Check("parameters, per-step buffers and their initial values", _norm_inputs("init"),
              _compare_init),
        Check("training output and gradient at each step", _norm_inputs("run"), _compare_train,
              points=2),
        Check("running statistics per step, reuse rule beyond max_length",
              _norm_inputs("run"), _compare_running, points=2),
        Check("running statistics with momentum=0.3", _norm_inputs("run", custom=True),
              _compare_running),
        Check("eval mode: statistics of step t, last step's beyond max_length, no update",
              _norm_inputs("run"), _compare_eval, points=2),
    ),
)


# --- 08.bn_lstm_step ----------------------------------------------------------------------

def _reference_step():
    def bn_lstm_step(cell, x, h, c, t):
        return cell(x, (h, c), time_step=t)
    return bn_lstm_step


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


def _variant_outputs(inputs, variant):
    """(h, c) at every training step of a BN-LSTM written with a typical mistake."""
    import torch

    cell = _make_cell(inputs)
    cell.train()
    F = torch.nn.functional
    h = c = torch.zeros(inputs["N"], inputs["H"])
    hs = []
    with torch.no_grad():
        for t, x in enumerate(inputs["x"]):
            x = torch.from_numpy(x)
            wx, wh = F.linear(x, cell.weight_ih), F.linear(h, cell.weight_hh)
            if variant == "sum":
                gates = cell.bn_hh(wx + wh, t) + cell.bias
            else:
                gates = cell.bn_hh(wh, t) + cell.bn_ih(wx, t) + cell.bias
            i, f, g, o = gates.chunk(4, 1)
            if variant == "order":  # i, f, o, g
                g, o = o, g
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            if variant == "carried":
                c = cell.bn_c(c, t)
                h = torch.sigmoid(o) * torch.tanh(c)
            elif variant == "no_bn_c":
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                h = torch.sigmoid(o) * torch.tanh(cell.bn_c(c, t))
            hs.append((h.numpy().copy(), c.numpy().copy()))
    return hs


_STEP_HINTS = (
    ("sum", "normalise the two terms separately, BN(W_hh h) + BN(W_ih x) + b, not their sum"),
    ("carried", "the carried cell state stays unnormalised: BN(c_t) enters only "
                "h_t = sigmoid(o) * tanh(BN(c_t)), and c_t itself is returned"),
    ("no_bn_c", "the output uses tanh(BN(c_t)) with cell.bn_c, not tanh(c_t)"),
    ("order", "the gate order is torch's: i, f, g, o"),
)


def _compare_step(got, expected, inputs):
    variants = {}

    def hints(t, which):
        def alternative(key):
            if key not in variants:
                variants[key] = _variant_outputs(inputs, key)
            return variants[key][t][which]
        return [(text, lambda key=key: alternative(key)) for key, text in _STEP_HINTS]

    for t in range(len(inputs["x"])):
        for which, name in ((0, "h"), (1, "c")):
            message = array_mismatch(got[f"{name}_{t}"], expected[f"{name}_{t}"],
                                     f"{name}_new at step {t}", **TOL, hints=hints(t, which))
            if message:
                return message
    return None


def _compare_step_state(got, expected, inputs):
    for key in sorted(k for k in expected if k.startswith("no_grad_")):
        if got[key]:
            return (f"no gradient reached cell.{key[8:]}: is it used, and is the output "
                    f"computed from it with torch operations?")
    for key in sorted(k for k in expected if k.startswith("grad_")):
        message = array_mismatch(got[key], expected[key], key.replace("grad_", "gradient of "),
                                 rtol=1e-3, atol=1e-5)
        if message:
            return message
    for key in sorted(k for k in expected if "running" in k):
        message = array_mismatch(got[key], expected[key], key, **TOL)
        if message:
            return message + " (call cell.bn_ih, cell.bn_hh and cell.bn_c with the step t)"
    for t in range(len(inputs["x_eval"])):
        message = array_mismatch(got[f"eval_h_{t}"], expected[f"eval_h_{t}"],
                                 f"eval-mode h_new at step {t}", **TOL)
        if message:
            return message + " (pass the time step t to every BN)"
    return None


def _step_inputs(rng):
    D, H, N, L = 3, 4, 5, 3
    params = {
        "weight_ih": rng.normal(0, 0.5, (4 * H, D)), "weight_hh": rng.normal(0, 0.5, (4 * H, H)),
        "bias": rng.normal(0, 0.3, 4 * H), "bn_ih.weight": rng.uniform(0.05, 1, 4 * H),
        "bn_hh.weight": rng.uniform(0.05, 1, 4 * H), "bn_c.weight": rng.uniform(0.3, 1.5, H),
        "bn_c.bias": rng.normal(0, 0.3, H),
    }
    return {
        "D": D, "H": H, "N": N, "max_length": L,
        "params": {k: v.astype(np.float32) for k, v in params.items()},
        "x": [rng.normal(t % 2, 1, (N, D)).astype(np.float32) for t in range(L + 2)],
        "dh": rng.standard_normal((L + 2, N, H)).astype(np.float32),
        "x_eval": [rng.normal(0, 1, (2, D)).astype(np.float32) for _ in range(L + 2)],
    }


STEP = Exercise(
    module="08", name="bn_lstm_step", kind="function",
    run=_run_step, reference=_reference_step,
    forbidden=_PACKAGE_CELL,
    checks=(
        Check("h_new and c_new at each training step", _step_inputs, _compare_step, points=2),
        Check("gradients, per-step running statistics, eval mode beyond max_length",
              _step_inputs, _compare_step_state, points=2),
    ),
)


# --- 08.predictions ------------------------------------------------------------------------

QUESTIONS = {
    "n_running_mean_buffers": "How many buffers named running_mean does "
                              "BNLSTMCell(32, 128, max_length=50) hold?",
    "bn_hh_running_mean_shape": "The shape of its bn_hh.running_mean, as a tuple",
    "eval_row_for_step_54": "In eval mode, which row of the running statistics does "
                            "time step 54 (0-based) use?",
}


def _reference_predictions():
    def predictions():
        from bncourse.nn.recurrent import BNLSTMCell

        cell = BNLSTMCell(32, 128, max_length=50)
        buffers = dict(cell.named_buffers())
        return {
            "n_running_mean_buffers": sum(n.endswith("running_mean") for n in buffers),
            "bn_hh_running_mean_shape": tuple(buffers["bn_hh.running_mean"].shape),
            "eval_row_for_step_54": cell.bn_hh.step_index(54),
        }
    return predictions


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


_PREDICTION_HINTS = {
    "n_running_mean_buffers": "one BN for the input term, one for the recurrent term, one for "
                              "the cell state",
    "bn_hh_running_mean_shape": "one row per time step up to max_length, one column per gate "
                                "unit (4 gates of 128 units)",
    "eval_row_for_step_54": "beyond max_length the statistics of the last step are reused; "
                            "rows are numbered from 0",
}


def _compare_prediction(got, expected, inputs):
    if got["value"] != expected["value"]:
        key = inputs["key"]
        return f"{key}: {got['value']} is not right. Hint: {_PREDICTION_HINTS[key]}"
    return None


def _prediction_inputs(key):
    def make(rng):
        return {"key": key}
    return make


PREDICTIONS = Exercise(
    module="08", name="predictions", kind="function",
    run=_run_predictions, reference=_reference_predictions,
    checks=tuple(Check(question, _prediction_inputs(key), _compare_prediction)
                 for key, question in QUESTIONS.items()),
)

EXERCISES = (PER_STEP, STEP, PREDICTIONS)
