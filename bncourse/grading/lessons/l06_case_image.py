"""Module 06 exercises (case study 06, image recognition): `inception_block`, a full Inception
block with 1x1 reductions and BN inside every branch, which the grader trains at a high learning
rate on a held-out split of the digits; and `answers`, three predictions checked against what the
lesson measured."""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, SubmissionError, fmt
from bncourse.grading.drivers.l06_case_image import (TRAIN, _build, _expected_shape, _run_structure, _run_train, _run_block, _run_answers)  # noqa: F401

__all__ = ["EXERCISES", "reference_inception_block", "reference_answers", "TRAIN"]

MODULE = "06"
NOTEBOOK = "06_case_image_exercises.ipynb"
USES_COURSE_LAYERS = True  # may import bncourse.nn, models (sandbox: not sealed)
REQUIRED = True  # for the certificate

# The lesson's simplified block and CNN would skip the exercise.
BLOCK_FORBIDDEN = ("bncourse.models.InceptionBlock", "bncourse.models.inception_cnn")

def reference_inception_block(in_channels, widths, norm=None):
    """The grader's block: `bncourse.models.InceptionBlock` with 1x1 reductions, avg pooling."""
    from bncourse.models import InceptionBlock

    n1, r3, n3, rd, nd, npool = widths
    return InceptionBlock(in_channels, (n1, n3, nd, npool), norm=norm, reductions=(r3, rd),
                          pool="avg")


def reference_answers():
    return {"tolerates_30x": "B", "bias_before_bn_gradient": "zero",
            "eval_output_depends_on_batch": False}


def _compare_shape(got, expected, inputs):
    want = _expected_shape(inputs)
    if got["shape"] == want:
        return None
    message = f"output shape {tuple(got['shape'])}, expected {tuple(want)}"
    if len(got["shape"]) == 4 and got["shape"][1] == sum(inputs["widths"]):
        return (message + ". Hint: concatenate the four branch outputs only (1x1, 3x3, double "
                "3x3, pool projection); the reductions feed their branch, they are not outputs")
    if len(got["shape"]) == 4 and got["shape"][2:] != want[2:]:
        return (message + ". Hint: every branch must keep H and W: padding=1 for the 3x3 "
                "convolutions, and stride=1, padding=1 for the 3x3 pooling")
    if len(got["shape"]) == 4 and got["shape"][1] != want[1]:
        return message + ". Hint: concatenate the branches on the channel axis, dim=1"
    return message


def _compare_no_norm(got, expected, inputs):
    message = _compare_shape(got, expected, inputs)
    if message:
        return message
    if got["num_norms"]:
        return (f"with norm=None the block has {got['num_norms']} normalisation layers; "
                "expected none (build a norm only when norm is given)")
    if got["num_convs"] != 7:
        return (f"the block has {got['num_convs']} convolutions, expected 7 (1x1; 1x1 reduce "
                "-> 3x3; 1x1 reduce -> 3x3 -> 3x3; pool -> 1x1)")
    if got["conv_biases"] != 7:
        return "with norm=None every convolution needs its bias (nothing else shifts it)"
    return None


def _compare_bn_inside(got, expected, inputs):
    message = _compare_shape(got, expected, inputs)
    if message:
        return message
    want = expected["bn_channels"]
    channels = got["bn_channels"]
    total = _expected_shape(inputs)[1]
    if total in channels and total not in want:
        return (f"a BN normalises {total} channels, the concatenation. Hint: BN goes inside "
                "each branch, after each convolution, not after the concatenation")
    if channels != want:
        return (f"the BNs see {channels} channels, expected one BN per convolution with "
                f"{want} (built as norm(num_channels) right after each convolution, "
                "reductions included)")
    if got["bn_input_min"] >= 0:
        return ("every BN input is non-negative: BN sits after the ReLU. Hint: put BN on the "
                "convolution's output, before the nonlinearity, as Ioffe & Szegedy do")
    return None


def _compare_no_bias(got, expected, inputs):
    message = _compare_bn_inside(got, expected, inputs)
    if message:
        return "(fix the previous check first) " + message
    if got["conv_biases"]:
        return (f"{got['conv_biases']} convolutions before a BN have a bias: it is redundant "
                "(BN subtracts the batch mean, beta takes its role); use bias=False")
    return None


def _compare_train(got, expected, inputs):
    threshold = TRAIN["threshold"]
    if not np.isfinite(got["loss"]):
        return ("the training loss became NaN: the network diverged at lr "
                f"{TRAIN['lr']}. Hint: is there a BN after every convolution, inside each "
                "branch (not only after the concatenation)?")
    acc = got["eval_accuracy"]
    if acc > threshold:
        return None
    message = (f"test accuracy in eval mode {fmt(acc)} after {TRAIN['steps']} steps, expected "
               f"more than {threshold}")
    if got["train_mode_accuracy"] > threshold and got["train_mode_accuracy"] > acc + 0.1:
        return (message + f" (in train mode: {fmt(got['train_mode_accuracy'])}). Hint: eval "
                "mode uses the running statistics; does every BN update them (a BN built "
                "inside forward, or with track_running_stats=False, never does)?")
    return message + (". Hint: the earlier checks test the wiring (shapes kept, BN inside each "
                      "branch before the ReLU); a correctly wired block reaches 0.96-0.99 here, "
                      "so compare each branch with the four the exercise describes")


def _structure_inputs(norm, widths, shape=(4, 6, 8, 8)):
    def make(rng):
        return {"norm": norm, "C": shape[1], "widths": list(widths),
                "x": rng.standard_normal(shape).astype(np.float32)}
    return make


def _train_inputs(rng):
    return {"widths": [8, 4, 8, 4, 8, 8], "split_seed": int(rng.integers(100, 10_000)),
            "init_seed": int(rng.integers(0, 1000))}


def _with_part(make, part):
    def wrapped(rng):
        inputs = make(rng)
        inputs["part"] = part
        return inputs
    return wrapped


WIDTHS_A = (5, 3, 6, 2, 4, 7)
WIDTHS_B = (4, 2, 3, 3, 5, 6)

INCEPTION_BLOCK = Exercise(
    uses_course_layers=True, module="06", name="inception_block", kind="function",
    run=_run_block, reference=lambda: reference_inception_block,
    forbidden=BLOCK_FORBIDDEN,
    checks=(
        Check("output shape (N, n1x1 + n3x3 + n_double + n_pool, H, W)",
              _with_part(_structure_inputs(True, WIDTHS_A, (3, 6, 5, 7)), "structure"),
              _compare_shape),
        Check("norm=None: 7 convolutions with biases, no normalisation",
              _with_part(_structure_inputs(False, WIDTHS_B), "structure"), _compare_no_norm),
        Check("BN after every convolution, inside each branch, before the ReLU",
              _with_part(_structure_inputs(True, WIDTHS_A), "structure"), _compare_bn_inside,
              points=2),
        Check("no redundant bias in a convolution followed by BN",
              _with_part(_structure_inputs(True, WIDTHS_B), "structure"), _compare_no_bias),
        Check(f"trained by the grader at lr {TRAIN['lr']} (momentum 0.9) for {TRAIN['steps']} "
              f"steps: test accuracy above {TRAIN['threshold']} on a held-out split",
              _with_part(_train_inputs, "train"), _compare_train, points=3,
              timeout=60.0),  # 100 SGD steps: about 1.6 s on an idle core, 9 s at load 5
    ),
)

# --- answers ------------------------------------------------------------------------------

QUESTIONS = {
    "tolerates_30x": (("A", "B"), "B",
                      "look at section 2 of the lesson: which network still trained at 30x?"),
    "bias_before_bn_gradient": (("zero", "small", "large"), "zero",
                                "BN subtracts the batch mean of Wu + b: what is left of b?"),
    "eval_output_depends_on_batch": ((True, False), False,
                                     "in eval mode BN uses fixed running statistics"),
}


def _compare_answer(got, expected, inputs):
    choices, _, hint = QUESTIONS[inputs["key"]]
    value = got["value"]
    if value not in choices or type(value) is not type(choices[0]):
        return f"{inputs['key']}: {value!r} is not one of the choices {list(choices)}"
    if value != expected["value"]:
        return f"{inputs['key']}: {value!r} is not what the lesson measured. Hint: {hint}"
    return None


def _answer_inputs(key):
    return lambda rng: {"key": key}


ANSWERS = Exercise(
    uses_course_layers=True, module="06", name="answers", kind="function",
    run=_run_answers, reference=lambda: reference_answers,
    checks=tuple(Check(f"prediction: {key}", _answer_inputs(key), _compare_answer)
                 for key in QUESTIONS),
)

EXERCISES = (INCEPTION_BLOCK, ANSWERS)
