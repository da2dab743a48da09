"""Tests for bncourse.profiling: structure of the results, argument checks, the primitives
baseline. No speed assertions: timings on a shared machine are not a test (see benchmarks/)."""
import pytest
import torch
import torch.nn.functional as F

from bncourse.profiling import (
    IMPLEMENTATIONS,
    STEP_MODELS,
    BenchmarkRow,
    StepRow,
    batch_norm_primitives,
    benchmark_batchnorm,
    benchmark_training_steps,
    format_benchmark_table,
    format_step_table,
    measure_peak_memory,
)

TINY_SHAPES = ((8, 4), (4, 3, 5, 5))


@pytest.fixture(scope="module")
def rows():
    return benchmark_batchnorm(TINY_SHAPES, repeats=2, warmup=1)


def test_one_row_per_shape_and_implementation(rows):
    assert [(r.shape, r.implementation) for r in rows] == [
        (shape, name) for shape in TINY_SHAPES for name in IMPLEMENTATIONS
    ]
    assert all(isinstance(r, BenchmarkRow) for r in rows)
    assert all(r.median_ms > 0 and r.ratio_to_native > 0 for r in rows)


def test_native_ratio_is_one_and_primitives_memory_ratio_is_one(rows):
    for r in rows:
        if r.implementation == "native":
            assert r.ratio_to_native == pytest.approx(1.0, rel=1e-12)
        if r.implementation == "primitives":
            assert r.memory_ratio_to_primitives == pytest.approx(1.0, rel=1e-12)


def test_memory_is_measured_for_torch_implementations_only(rows):
    for r in rows:
        if r.implementation == "numpy":
            assert r.peak_memory_mb is None and r.memory_ratio_to_primitives is None
        else:
            # At least the output and the gradient of x, each the size of the input.
            nbytes = 4 * torch.Size(r.shape).numel()
            assert r.peak_memory_mb >= 2 * nbytes / 2**20


def test_memory_ratio_is_none_without_primitives():
    rows = benchmark_batchnorm(((6, 2),), implementations=("native", "bncourse"),
                               repeats=2, warmup=0)
    assert [r.implementation for r in rows] == ["native", "bncourse"]
    assert all(r.memory_ratio_to_primitives is None for r in rows)
    assert all(r.peak_memory_mb is not None for r in rows)


def test_measure_memory_false_gives_none():
    rows = benchmark_batchnorm(((6, 2),), implementations=("native",), repeats=1, warmup=0,
                               measure_memory=False)
    assert rows[0].peak_memory_mb is None


def test_threads_are_restored():
    before = torch.get_num_threads()
    benchmark_batchnorm(((6, 2),), implementations=("native",), repeats=1, warmup=0,
                        threads=1, measure_memory=False)
    assert torch.get_num_threads() == before


def test_table_has_a_line_per_row_and_every_shape(rows):
    table = format_benchmark_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)  # header, separator, one line per row
    assert lines[0].startswith("| shape |")
    for shape in TINY_SHAPES:
        assert str(shape) in table
    assert "n/a" in table  # numpy memory


def test_table_rejects_other_objects():
    with pytest.raises(TypeError, match="BenchmarkRow"):
        format_benchmark_table([{"shape": (2, 2)}])


def test_measure_peak_memory_counts_a_new_tensor():
    mb = measure_peak_memory(lambda: torch.empty(1024, 1024).fill_(1.0))
    assert mb == pytest.approx(4.0, rel=0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shapes=()), "at least one shape"),
        (dict(shapes=((4,),)), "positive ints"),
        (dict(shapes=((4, 0),)), "positive ints"),
        (dict(shapes=((1, 3),)), "1 value per channel"),
        (dict(implementations=("native", "cudnn")), "unknown implementation"),
        (dict(implementations=("bncourse", "primitives")), "must include 'native'"),
        (dict(implementations=("native", "native")), "must not repeat"),
        (dict(repeats=0), "repeats must be an int >= 1"),
        (dict(threads=0), "threads must be an int >= 1"),
        (dict(warmup=-1), "warmup must be an int >= 0"),
        (dict(dtype=torch.float16), "dtype must be"),
        (dict(channels_last=True), "channels_last needs 4-D or 5-D"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmark_batchnorm(**{"shapes": ((4, 2),), "repeats": 1, **kwargs})


def test_extra_implementation_is_timed_beside_native():
    calls = []

    def doubled_native(x, weight, bias, dy):
        calls.append(tuple(x.shape))
        F.batch_norm(x, None, None, weight, bias, training=True).backward(dy)
        F.batch_norm(x, None, None, weight, bias, training=True).backward(dy)

    rows = benchmark_batchnorm(((6, 2),), implementations=("native", "twice"), repeats=3,
                               warmup=1, measure_memory=False,
                               extra_implementations={"twice": doubled_native})
    assert [r.implementation for r in rows] == ["native", "twice"]
    assert calls == [(6, 2)] * 4  # 1 warm-up + 3 timed
    assert rows[1].ratio_to_native > 0 and rows[1].passes > 0


def test_an_extra_implementation_not_named_is_not_run():
    def fail(*args):
        raise AssertionError("not asked for")

    rows = benchmark_batchnorm(((6, 2),), implementations=("native",), repeats=1, warmup=0,
                               measure_memory=False, extra_implementations={"other": fail})
    assert [r.implementation for r in rows] == ["native"]


@pytest.mark.parametrize(
    "extra, error, message",
    [
        ({"bncourse": lambda *a: None}, ValueError, "'bncourse' must be a new name"),
        ({"copy": lambda *a: None}, ValueError, "'copy' must be a new name"),
        ({3: lambda *a: None}, ValueError, "3 must be a new name"),
        ({"mine": "not callable"}, TypeError, r"extra_implementations\['mine'\] must be callable"),
        ([("mine", print)], TypeError, "must be a dict"),
    ],
)
def test_bad_extra_implementations_are_named(extra, error, message):
    with pytest.raises(error, match=message):
        benchmark_batchnorm(((4, 2),), implementations=("native",), repeats=1,
                            extra_implementations=extra)


def test_unknown_implementation_says_how_to_add_one():
    with pytest.raises(ValueError, match="extra_implementations"):
        benchmark_batchnorm(((4, 2),), implementations=("native", "mine"), repeats=1)


def test_string_implementations_raise_type_error():
    with pytest.raises(TypeError, match="sequence of names"):
        benchmark_batchnorm(((4, 2),), implementations="native", repeats=1)


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6), (2, 3, 4, 5), (2, 2, 3, 3, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_primitives_match_torch_batch_norm_float64(shape, affine):
    gen = torch.Generator().manual_seed(0)
    x = (3.0 + 2.0 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()
    C = shape[1]
    weight = torch.randn(C, generator=gen, dtype=torch.float64).requires_grad_() if affine else None
    bias = torch.randn(C, generator=gen, dtype=torch.float64).requires_grad_() if affine else None
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    params = [x] + ([weight, bias] if affine else [])

    y = batch_norm_primitives(x, weight, bias, eps=1e-5)
    grads = torch.autograd.grad(y, params, dy)
    y_ref = F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
    grads_ref = torch.autograd.grad(y_ref, params, dy)

    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_primitives_reject_1d_input():
    with pytest.raises(ValueError, match="shape"):
        batch_norm_primitives(torch.randn(5), None, None)


def test_rows_carry_passes_and_conditions(rows):
    for r in rows:
        assert r.passes is not None and r.passes > 0
        assert (r.threads, r.dtype, r.channels_last) == (1, "float32", False)
    # passes = time / (one read + write of the tensor), one copy time per shape.
    for shape in TINY_SHAPES:
        copy_ms = {r.median_ms / r.passes for r in rows if r.shape == shape}
        assert max(copy_ms) == pytest.approx(min(copy_ms), rel=1e-9)


def test_channels_last_rows_say_so_and_float64_is_named():
    rows = benchmark_batchnorm(((2, 3, 4, 4), (2, 3, 2, 2, 2)), ("native", "bncourse"),
                               repeats=2, warmup=0, measure_memory=False, channels_last=True,
                               dtype=torch.float64)
    assert all(r.channels_last and r.dtype == "float64" for r in rows)
    assert "channels-last" in format_benchmark_table(rows)


def test_channels_last_must_be_a_bool():
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        benchmark_batchnorm(((2, 3, 4, 4),), repeats=1, channels_last="yes")


@pytest.fixture(scope="module")
def step_rows():
    return benchmark_training_steps(repeats=2, warmup=1)


def test_training_steps_give_torch_then_bncourse_per_model(step_rows):
    assert [(r.model, r.implementation) for r in step_rows] == [
        (m, name) for m in STEP_MODELS for name in ("torch", "bncourse")]
    for r in step_rows:
        assert isinstance(r, StepRow) and r.median_ms > 0 and r.threads == 1
        if r.implementation == "torch":
            assert r.ratio_to_torch == pytest.approx(1.0, rel=1e-12)


def test_step_table_has_a_line_per_row(step_rows):
    lines = format_step_table(step_rows).splitlines()
    assert len(lines) == 2 + len(step_rows) and lines[0].startswith("| model |")
    with pytest.raises(TypeError, match="StepRow"):
        format_step_table([{"model": "mlp"}])


def test_training_steps_restore_threads():
    before = torch.get_num_threads()
    benchmark_training_steps(("mlp",), repeats=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(models=("resnet",)), ValueError, "models must be names"),
    (dict(models=()), ValueError, "models must be names"),
    (dict(models="mlp"), TypeError, "sequence of names"),
    (dict(repeats=0), ValueError, "repeats must be an int >= 1"),
    (dict(threads=0), ValueError, "threads must be an int >= 1"),
    (dict(warmup=-1), ValueError, "warmup must be an int >= 0"),
])
def test_training_steps_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        benchmark_training_steps(**{"repeats": 1, **kwargs})
