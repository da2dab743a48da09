"""Module 05 checks: the solutions pass, stubs score 0, typical mistakes get their hints
(conv folding, recalibration with dropout on), and a learner who takes lesson 05's tools (the
package's fold and recalibration, torch's fuse_conv_bn_eval) does not pass the module."""
import numpy as np
import pytest
import torch

import bncourse
from bncourse.grading import registry
from grading_helpers import EXERCISES, check_messages, solution_cells, solution_objects
from lesson_copy_helpers import module_score

NOTEBOOK = "05_inference_exercises.ipynb"
NAMES = ["batchnorm_eval", "fold_conv_bn", "recalibrate_bn", "inference_questions"]


@pytest.fixture(scope="module")
def source():
    return "\n\n".join(solution_cells(NOTEBOOK))


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(source, name):
    report, messages = check_messages(f"05.{name}", solution_objects(source, NOTEBOOK)[name])
    assert report.score == 1.0, messages


def test_module_has_the_stated_points():
    points = {e.name: e.max_points for e in registry.module_exercises("05")}
    assert points == {"batchnorm_eval": 5, "fold_conv_bn": 6, "recalibrate_bn": 5,
                      "inference_questions": 3}


def test_stubs_score_zero_and_the_stub_notebook_has_no_solutions():
    def stub(*args, **kwargs):
        raise NotImplementedError

    for name in NAMES:
        report = bncourse.check(f"05.{name}", stub, quiet=True)
        assert report.score == 0 and report.not_implemented, name
    text = (EXERCISES / NOTEBOOK).read_text()
    assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text and "✗" in text


FOLD_MISTAKES = [
    ("input channels scaled", {"conv.weight * scale.reshape(-1, 1, 1, 1)":
                               "conv.weight * scale.reshape(1, -1, 1, 1)"},
     "scale the output channels"),
    ("bias not through BN", {"folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)":
                             "folded.bias.copy_(bias - bn.running_mean * scale + bn.bias)"},
     "bias goes through BN too"),
    ("eps outside", {"scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)":
                     "scale = bn.weight / (torch.sqrt(bn.running_var) + bn.eps)"},
     "eps goes inside the square root"),
    ("geometry lost", {"stride=conv.stride, padding=conv.padding,\n"
                       "                                 dilation=conv.dilation, groups=conv.groups, bias=True)":
                       "padding=conv.padding, groups=conv.groups, bias=True)"},
     "copy them from conv"),
    ("no bias", {"groups=conv.groups, bias=True)": "groups=conv.groups, bias=False)",
                 "        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)\n": ""},
     "needs a bias"),
    ("changes the given conv", {"    return folded\n": "    conv.weight.data.mul_(2)\n    return folded\n"},
     "changed the given conv"),
]


@pytest.mark.parametrize("what, replacements, hint", FOLD_MISTAKES, ids=[m[0] for m in FOLD_MISTAKES])
def test_fold_mistakes_get_hints(source, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)["fold_conv_bn"]
    report, messages = check_messages("05.fold_conv_bn", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


RECALIBRATE_MISTAKES = [
    ("the whole model in training mode", {"    model.eval()  # dropout and the rest stay in eval mode\n":
                                          "    model.train()\n"},
     "put only the BN layers in training mode"),
    ("no reset", {"        m.reset_running_stats()\n": ""}, "reset the running statistics first"),
    ("momentum kept", {"        m.momentum = None  # cumulative average over the batches\n": ""},
     "bn.momentum = None"),
    ("momentum not restored", {"        m.momentum = momentum\n": "        pass\n"},
     "restore each BN's original momentum"),
    ("gradients computed", {"    with torch.no_grad():\n        for x in batches:\n            model(x)":
                            "    for x in batches:\n        model(x).sum().backward()"},
     "run the batches under torch.no_grad()"),
]


@pytest.mark.parametrize("what, replacements, hint", RECALIBRATE_MISTAKES,
                         ids=[m[0] for m in RECALIBRATE_MISTAKES])
def test_recalibrate_mistakes_get_hints(source, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)["recalibrate_bn"]
    report, messages = check_messages("05.recalibrate_bn", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_left_in_training_mode(source):
    recalibrate = solution_objects(source, NOTEBOOK)["recalibrate_bn"]

    def recalibrate_bn(model, batches):
        recalibrate(model, batches)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
        return model

    report, messages = check_messages("05.recalibrate_bn", recalibrate_bn)
    assert any("left in training mode" in m for m in messages), messages


QUESTION_MISTAKES = [
    ("folded bias without scaling b",
     {'return (moved - data["running_mean"]) * s + data["beta"]':
      'return (moved - data["running_mean"] * s + data["beta"]) if question == "folded_bias" '
      'else (moved - data["running_mean"]) * s + data["beta"]'}, "the layer's bias goes through BN"),
    ("weight of the first batch without m", {"return m * (1 - m) ** (data[\"K\"] - 1)":
                                             "return (1 - m) ** (data[\"K\"] - 1)"},
     "enters with weight m"),
    ("stale mean is beta", {'return (moved - data["running_mean"]) * s + data["beta"]':
                            'return (moved - data["running_mean"]) * s + data["beta"] '
                            'if question == "folded_bias" else data["beta"]'},
     "does not renormalise"),
]


@pytest.mark.parametrize("what, replacements, hint", QUESTION_MISTAKES,
                         ids=[m[0] for m in QUESTION_MISTAKES])
def test_question_mistakes_get_hints(source, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)["inference_questions"]
    report, messages = check_messages("05.inference_questions", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_taking_the_lessons_tools_does_not_pass():
    import bncourse.nn as bnn
    from bncourse.reference import batchnorm_inference

    def fold_conv_bn(conv, bn):
        return torch.nn.utils.fuse_conv_bn_eval(conv, bn)

    def recalibrate_bn(model, batches):
        return bnn.recalibrate_batchnorm(model, batches)

    score = module_score("05", {"batchnorm_eval": batchnorm_inference,
                                "fold_conv_bn": fold_conv_bn, "recalibrate_bn": recalibrate_bn})
    assert score < 0.5, score
