"""Module 08 exercises, part 2: the BN-LSTM step (`bn_lstm_step`, compared with
`bncourse.nn.BNLSTMCell`, hints for the usual structural mistakes) and three predictions about
the per-step buffers. Imported by `l08_case_nlp.py` (the registry reads only `lNN_*` files).
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, SubmissionError, array_mismatch, as_array
from bncourse.grading.drivers.l08_case_nlp import (_make_cell, _run_step, _run_predictions)  # noqa: F401

__all__ = ["STEP", "PREDICTIONS"]

TOL = dict(rtol=1e-4, atol=2e-5)
_PACKAGE_CELL = ("bncourse.nn.recurrent._LSTMCellBase.forward",
                 "bncourse.nn.recurrent._LSTMCellBase.step",
                 "bncourse.nn.recurrent.BNLSTMCell._input_term",
                 "bncourse.nn.recurrent.BNLSTMCell._recurrent_term",
                 "bncourse.nn.recurrent.BNLSTMCell._cell_output",
                 "bncourse.nn.recurrent.BNLSTMCell.input_terms",
                 "bncourse.nn.recurrent.run_cell")


# --- 08.bn_lstm_step ----------------------------------------------------------------------

def _reference_step():
    def bn_lstm_step(cell, x, h, c, t):
        return cell(x, (h, c), time_step=t)
    return bn_lstm_step


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
    uses_course_layers=True, module="08", name="bn_lstm_step", kind="function",
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
    uses_course_layers=True, module="08", name="predictions", kind="function",
    run=_run_predictions, reference=_reference_predictions,
    checks=tuple(Check(question, _prediction_inputs(key), _compare_prediction)
                 for key, question in QUESTIONS.items()),
)
