"""Module 06's checks: the solution passes, a stub scores 0, each typical mistake gets its hint."""
from functools import partial

import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.grading import registry
from bncourse.grading.checks import roundtrip
from bncourse.grading.feedback import _static_uses, check
from bncourse.grading.lessons import l06_case_image as l06
from bncourse.grading.results import evaluate, make_inputs
from bncourse.grading.runner import Recorder, run_task
from bncourse.models import InceptionBlock

BLOCK = registry.get("06.inception_block")
ANSWERS = registry.get("06.answers")
SHAPE, NO_NORM, BN_INSIDE, NO_BIAS, TRAIN = range(5)


def one_check(exercise, obj, index, seed=0):
    """Score check `index` alone (as bncourse.check does, forbidden calls recorded)."""
    recorder = Recorder(exercise.forbidden)
    inputs = make_inputs(exercise, index, seed)
    with recorder.patched():
        outcome = run_task(exercise, obj, inputs, 30.0, recorder)
        if outcome["status"] == "ok":
            outcome["result"] = roundtrip(outcome["result"])
        return evaluate(exercise, exercise.checks[index], inputs, outcome,
                        _static_uses(exercise, obj))


class _Block(nn.Module):
    def __init__(self, branches, after=None):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.after = after if after is not None else nn.Identity()

    def forward(self, x):
        return self.after(torch.cat([b(x) for b in self.branches], dim=1))


def block(in_channels, widths, norm=None, mistake=None):
    """A hand-written Inception block; `mistake` makes one typical error."""
    n1, r3, n3, rd, nd, npool = widths
    branch_norm = None if mistake in ("concat_bn", "ignores_norm") else norm

    def unit(c_in, c_out, k):
        bias = branch_norm is None or mistake == "bias_kept"
        layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)]
        if branch_norm is not None:
            bn = branch_norm(c_out, momentum=0.0) if mistake == "frozen_stats" else branch_norm(c_out)
            layers += [nn.ReLU(), bn] if mistake == "bn_after_relu" else [bn, nn.ReLU()]
        else:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    if mistake == "no_reductions":  # the lesson's simplified layout, written by hand
        branches = [unit(in_channels, n1, 1), unit(in_channels, n3, 3),
                    nn.Sequential(unit(in_channels, nd, 3), unit(nd, nd, 3)),
                    nn.Sequential(nn.MaxPool2d(3, 1, 1), unit(in_channels, npool, 1))]
    else:
        reduce3, reduced = unit(in_channels, r3, 1), unit(in_channels, rd, 1)
        branches = [unit(in_channels, n1, 1), nn.Sequential(reduce3, unit(r3, n3, 3)),
                    nn.Sequential(reduced, unit(rd, nd, 3), unit(nd, nd, 3)),
                    nn.Sequential(nn.AvgPool2d(3, 1, 1), unit(in_channels, npool, 1))]
        if mistake == "concat_reductions":
            branches += [unit(in_channels, r3, 1), unit(in_channels, rd, 1)]
    total = sum(b[-1][0].out_channels if isinstance(b[-1], nn.Sequential) else b[0].out_channels
                for b in branches)
    after = norm(total) if mistake == "concat_bn" and norm is not None else None
    return _Block(branches, after)


def lesson_block(in_channels, widths, norm=None):
    n1, r3, n3, rd, nd, npool = widths
    return InceptionBlock(in_channels, (n1, n3, nd, npool), norm=norm)


def stub(in_channels, widths, norm=None):
    raise NotImplementedError("replace this line with your code")


def good_answers():
    return {"tolerates_30x": "B", "bias_before_bn_gradient": "zero",
            "eval_output_depends_on_batch": False}


def test_the_lesson_file_is_registered_as_required():
    assert registry.NOTEBOOKS["06"] == "06_case_image_exercises.ipynb"
    assert "06" in registry.REQUIRED_MODULES
    assert [e.name for e in registry.module_exercises("06")] == ["inception_block", "answers"]


def test_the_reference_passes_every_structure_check():
    for index in (SHAPE, NO_NORM, BN_INSIDE, NO_BIAS):
        assert one_check(BLOCK, block, index).passed


def test_a_correct_block_trains_above_the_threshold():
    result = one_check(BLOCK, block, TRAIN)
    assert result.passed, result.message


def test_the_solution_and_stub_through_check():
    report = check("06.answers", good_answers, quiet=True)
    assert report.passed
    stubbed = check("06.inception_block", stub, quiet=True)
    assert stubbed.not_implemented and stubbed.score == 0
    assert "not implemented yet" in stubbed.text()


@pytest.mark.parametrize("mistake, index, hint", [
    ("concat_bn", BN_INSIDE, "after the concatenation"),
    ("bn_after_relu", BN_INSIDE, "after the ReLU"),
    ("ignores_norm", BN_INSIDE, "one BN per convolution"),
    ("no_reductions", BN_INSIDE, "one BN per convolution"),
    ("no_reductions", NO_NORM, "expected 7"),
    ("concat_reductions", SHAPE, "the reductions feed their branch"),
    ("bias_kept", NO_BIAS, "redundant"),
    ("bias_kept", BN_INSIDE, None),  # a redundant bias is not a misplaced BN
])
def test_typical_mistakes_get_their_hint(mistake, index, hint):
    result = one_check(BLOCK, partial(block, mistake=mistake), index)
    if hint is None:
        assert result.passed
    else:
        assert not result.passed and hint in result.message, result.message


def test_frozen_running_statistics_get_the_eval_mode_hint():
    result = one_check(BLOCK, partial(block, mistake="frozen_stats"), TRAIN)
    assert not result.passed and "eval mode uses the running statistics" in result.message


def test_the_lessons_block_is_flagged():
    result = one_check(BLOCK, lesson_block, SHAPE)
    assert not result.passed and "bncourse.models.InceptionBlock" in result.message


def test_the_lessons_layout_pasted_in_does_not_pass():
    # Copied (not called), the lesson's block has no reductions: it fails the structure checks
    # worth 4 of the 11 points of the module; with the training check it cannot reach 80%.
    pasted = partial(block, mistake="no_reductions")
    failed = [i for i in (NO_NORM, BN_INSIDE, NO_BIAS) if not one_check(BLOCK, pasted, i).passed]
    lost = sum(BLOCK.checks[i].points for i in failed)
    total = BLOCK.max_points + ANSWERS.max_points
    assert (total - lost) / total < registry.PASS_MARK


@pytest.mark.parametrize("got, hint", [
    ({"loss": float("nan"), "eval_accuracy": 0.1, "train_mode_accuracy": 0.1}, "diverged"),
    ({"loss": 0.1, "eval_accuracy": 0.3, "train_mode_accuracy": 0.97}, "eval mode"),
    ({"loss": 1.0, "eval_accuracy": 0.5, "train_mode_accuracy": 0.5}, "earlier checks"),
    ({"loss": 0.1, "eval_accuracy": 0.95, "train_mode_accuracy": 0.96}, None),
])
def test_compare_train_hints(got, hint):
    message = l06._compare_train(got, {}, {})
    assert (message is None) if hint is None else (hint in message)


def test_shape_hints_direct():
    inputs = {"widths": [2, 3, 4, 5, 6, 7], "x": torch.zeros(2, 3, 8, 8).numpy()}
    expected_channels = 2 + 4 + 6 + 7
    assert "padding=1" in l06._compare_shape({"shape": [2, expected_channels, 6, 6]}, {}, inputs)
    assert "dim=1" in l06._compare_shape({"shape": [2, 9, 8, 8]}, {}, inputs)
    assert l06._compare_shape({"shape": [2, expected_channels, 8, 8]}, {}, inputs) is None


@pytest.mark.parametrize("answers, index, hint", [
    ({**good_answers(), "tolerates_30x": "A"}, 0, "section 2"),
    ({**good_answers(), "bias_before_bn_gradient": "small"}, 1, "batch mean"),
    ({**good_answers(), "eval_output_depends_on_batch": True}, 2, "running statistics"),
    ({**good_answers(), "tolerates_30x": "C"}, 0, "not one of the choices"),
    ({**good_answers(), "eval_output_depends_on_batch": "no"}, 2, "not one of the choices"),
])
def test_wrong_answers_get_hints(answers, index, hint):
    result = one_check(ANSWERS, lambda: answers, index)
    assert not result.passed and hint in result.message, result.message


def test_answers_must_be_a_dict_with_the_keys():
    assert "must return a dict" in one_check(ANSWERS, lambda: ["B"], 0).message
    assert "no key" in one_check(ANSWERS, lambda: {}, 1).message
