"""Module 10 checks: the solutions pass, stubs score 0, the lesson's own code does not pass, calls
to torch's or the course's norms are flagged, and each typical mistake gets its hint."""
import pytest

import bncourse
from grading_helpers import check_messages, solution_cells, solution_objects

NOTEBOOK = "10_variants_small_batch_exercises.ipynb"


@pytest.fixture(scope="module")
def solution_source():
    cells = [c for c in solution_cells(NOTEBOOK) if "GhostBatchNorm1d(64" not in c]
    return "\n\n".join(cells)


NAMES = [("10.group_norm_channels_last", "group_norm_channels_last"),
         ("10.batch_renorm_train", "batch_renorm_train"), ("10.small_batch_predictions", "small_batch_predictions")]


def test_module_10_is_registered_and_required():
    from bncourse.grading import registry

    assert "10" in registry.REQUIRED_MODULES and registry.NOTEBOOKS["10"] == NOTEBOOK
    assert [e.name for e in registry.module_exercises("10")] == [n for _, n in NAMES]


# --- group_norm_channels_last ---------------------------------------------------------------

GN_RESHAPE = "    xg = x.reshape(N, -1, num_groups, C // num_groups)     # (N, positions, G, C/G)"
GN_MISTAKES = [
    ("unbiased variance", {"unbiased=False, keepdim=True)": "unbiased=True, keepdim=True)"},
     "biased variance"),
    ("strided groups", {GN_RESHAPE: "    xg = x.reshape(N, -1, C // num_groups, num_groups)"
                                    ".transpose(2, 3)",
                        "torch.sqrt(var + eps)).reshape(x.shape)":
                        "torch.sqrt(var + eps)).transpose(2, 3).reshape(x.shape)"},
     "consecutive channels"),
    ("per position", {"dim=(1, 3), keepdim=True)\n    var = xg.var(dim=(1, 3)":
                      "dim=3, keepdim=True)\n    var = xg.var(dim=3"}, "every spatial position"),
    ("no affine", {"return x_hat * weight + bias": "return x_hat"}, "per channel"),
    ("in place", {"return x_hat * weight + bias": "x.copy_(x_hat * weight + bias); return x"},
     "in place"),
]


@pytest.mark.parametrize("what, replacements, hint", GN_MISTAKES, ids=[m[0] for m in GN_MISTAKES])
def test_group_norm_mistakes_get_hints(solution_source, what, replacements, hint):
    fn = solution_objects(solution_source, NOTEBOOK, **replacements)["group_norm_channels_last"]
    report, messages = check_messages("10.group_norm_channels_last", fn)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_the_lessons_channels_first_code_does_not_pass():
    """group_norm_nchw from the lesson, with weight and bias added, on channels-last input."""
    import torch

    def group_norm_channels_last(x, num_groups, weight, bias, eps=1e-5):
        N, C = x.shape[:2]
        xg = x.reshape(N, num_groups, -1)
        mean = xg.mean(-1, keepdim=True)
        var = xg.var(-1, unbiased=False, keepdim=True)
        return ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape) * weight + bias

    report, messages = check_messages("10.group_norm_channels_last", group_norm_channels_last)
    assert report.score <= 0.5, messages  # only (N, C), G = 1 and G = C-like layouts can agree
    assert any("channels are on the LAST axis" in m for m in messages), messages


@pytest.mark.parametrize("call", [
    "torch.nn.functional.group_norm(x.movedim(-1, 1), num_groups, weight, bias, eps)",
    "bncourse.nn.group_norm(x.movedim(-1, 1), num_groups, weight, bias, eps)",
])
def test_calling_a_group_norm_is_flagged(call):
    namespace = {}
    exec("import torch, bncourse.nn, torch.nn.functional\n"
         "def group_norm_channels_last(x, num_groups, weight, bias, eps=1e-5):\n"
         f"    return ({call}).movedim(1, -1)\n", namespace)
    report, messages = check_messages("10.group_norm_channels_last",
                                      namespace["group_norm_channels_last"])
    assert report.score == 0 and all("flagged" in m for m in messages), messages


# --- batch_renorm_train ---------------------------------------------------------------------

RATIO = "        r = (sigma_B / sigma).clamp(1 / r_max, r_max)"
RENORM_MISTAKES = [
    ("variance ratio", {RATIO: "        r = (sigma_B**2 / sigma**2).clamp(1 / r_max, r_max)"},
     "ratio of standard deviations"),
    ("inverted ratio", {RATIO: "        r = (sigma / sigma_B).clamp(1 / r_max, r_max)"},
     "not sigma / sigma_B"),
    ("unbiased", {"x.var(dims, unbiased=False)": "x.var(dims, unbiased=True)"},
     "biased batch variance"),
    ("d not scaled", {"d = ((mean_B - running_mean) / sigma)": "d = ((mean_B - running_mean))"},
     "measured in running standard deviations"),
    ("clipped from above only", {RATIO: "        r = (sigma_B / sigma).clamp(max=r_max)"},
     "from below too"),
    ("no stop gradient", {"    with torch.no_grad():                                  # sg(.): r "
                          "and d carry no gradient\n": "    if True:\n"}, "stop gradient"),
    ("r not detached", {"    with torch.no_grad():                                  # sg(.): r "
                        "and d carry no gradient\n        sigma = torch.sqrt(running_var + eps)\n"
                        + RATIO + "\n":
                        "    sigma = torch.sqrt(running_var + eps)\n"
                        "    r = (sigma_B / sigma).clamp(1 / r_max, r_max)\n"
                        "    with torch.no_grad():\n"}, "r still carries a gradient"),
    ("running statistics updated", {"    return x_hat, r, d":
                                    "    running_mean.mul_(0.9)\n    return x_hat, r, d"},
     "changed running_mean"),
]


@pytest.mark.parametrize("what, replacements, hint", RENORM_MISTAKES,
                         ids=[m[0] for m in RENORM_MISTAKES])
def test_renorm_mistakes_get_hints(solution_source, what, replacements, hint):
    fn = solution_objects(solution_source, NOTEBOOK, **replacements)["batch_renorm_train"]
    report, messages = check_messages("10.batch_renorm_train", fn)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_renorm_with_the_course_layer_is_flagged():
    def batch_renorm_train(x, running_mean, running_var, r_max, d_max, eps=1e-5):
        import torch

        import bncourse.nn as bnn

        layer = bnn.BatchRenorm1d(x.shape[1], eps=eps, momentum=0.0, affine=False, r_max=r_max,
                                  d_max=d_max, warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0,
                                  dtype=x.dtype)
        with torch.no_grad():
            layer.running_mean.copy_(running_mean)
            layer.running_var.copy_(running_var)
        return layer(x), torch.ones(x.shape[1]), torch.zeros(x.shape[1])

    report, messages = check_messages("10.batch_renorm_train", batch_renorm_train)
    assert report.score == 0 and all("flagged" in m for m in messages), messages


def test_renorm_contract_errors():
    import torch

    report, messages = check_messages("10.batch_renorm_train", lambda *a, **k: a[0])
    assert report.score == 0 and any("must return a tuple" in m for m in messages), messages
    report, messages = check_messages(
        "10.batch_renorm_train",
        lambda x, *a, **k: (x.detach() * 1, torch.ones(x.shape[1]), torch.zeros(x.shape[1])))
    assert report.score == 0 and any("no gradient back to x" in m for m in messages), messages


# --- understanding --------------------------------------------------------------------------

def test_wrong_predictions_get_hints():
    def small_batch_predictions():
        return {"bn_batch_of_two_abs": 0.5, "layernorm_groups_c32": 32,
                "instancenorm_groups_c32": 1, "renorm_r1_d0_is": "no normalisation",
                "flat_across_batch_sizes": "BN", "ghost_batches_tracked": 10}

    report, messages = check_messages("10.small_batch_predictions", small_batch_predictions)
    assert report.score == 0 and len(messages) == 6
    assert all("Hint" in m for m in messages), messages


def test_answers_type_errors():
    report, messages = check_messages("10.small_batch_predictions",
                                      lambda: {"bn_batch_of_two_abs": "1", "renorm_r1_d0_is": "bn",
                                               "layernorm_groups_c32": True})
    assert report.score == 0
    assert any("give a number" in m for m in messages)
    assert any("not one of the choices" in m for m in messages)
    assert any("must be a number or a string" in m for m in messages)
    assert any("has no key" in m for m in messages)
