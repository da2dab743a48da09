"""Speed and memory of batch normalization implementations, measured honestly (lesson 04).

`benchmark_batchnorm` times forward + backward of training-mode batch normalization for several
implementations in the same run and reports each one relative to torch's native kernel:

- ``"native"``: `torch.nn.functional.batch_norm` (torch's fused C++ kernel).
- ``"bncourse"``: `bncourse.nn.batch_norm` (tensor operations + the compact backward).
- ``"primitives"``: `batch_norm_primitives`, the same maths written with mean/var/sub/div/mul/add
  and differentiated by plain autograd.
- ``"numpy"``: `bncourse.reference.batchnorm_forward` + `batchnorm_backward` on NumPy arrays.

How the measurement avoids the usual traps:

- The backward pass gets a dense random upstream gradient, ``y.backward(dy)``. The popular
  ``y.sum().backward()`` passes a gradient of ones with stride 0, which lets a composed backward
  skip most of its memory traffic and look several times faster than it is.
- Implementations are interleaved within every repeat, in a fresh random order each time, so a
  burst of activity from another process hits all of them alike and none always runs after the
  same neighbour (what ran before changes the state of caches and of the memory allocator); the ratio to native is therefore much
  more stable than the absolute milliseconds. Each number is the median over the repeats, after
  warm-up calls.
- The number of threads is fixed (`torch.set_num_threads`) and restored afterwards.

Also: `passes`, each time in units of one full read + write of the tensor (a copy timed in the
same repeats), and `benchmark_training_steps`, one SGD step of lesson 06's MLP and small CNN
with `bncourse.nn` BN layers against the same step with `torch.nn`'s (issue 24).

Peak memory: see `measure_peak_memory`.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bncourse import reference
from bncourse.nn import batch_norm as bncourse_batch_norm

__all__ = [
    "DEFAULT_SHAPES",
    "IMPLEMENTATIONS",
    "STEP_MODELS",
    "BenchmarkRow",
    "StepRow",
    "benchmark_training_steps",
    "format_step_table",
    "batch_norm_primitives",
    "measure_peak_memory",
    "benchmark_batchnorm",
    "format_benchmark_table",
]

# A wide MLP layer, an early conv layer (large spatial size), a later conv layer (more channels).
DEFAULT_SHAPES = ((256, 1024), (64, 64, 32, 32), (32, 128, 16, 16))
IMPLEMENTATIONS = ("native", "bncourse", "primitives", "numpy")


def batch_norm_primitives(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                          eps: float = 1e-5) -> Tensor:
    """Training-mode batch normalization from torch primitives, differentiated by autograd.

    ``y = weight * (x - mean) / sqrt(var + eps) + bias``, biased per-channel statistics over
    every dimension but 1. The baseline a learner writes first: autograd saves the intermediates
    of every op (lesson 04 compares its speed and memory with the compact backward).

    Args:
        x: `(N, C)` or `(N, C, *spatial)`.
        weight, bias: `(C,)` or None.
        eps: added to the variance inside the square root.

    Returns:
        Tensor of the shape of `x`.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C) or (N, C, *spatial), got {tuple(x.shape)}")
    dims = (0,) + tuple(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)  # (1, C, 1, ...) broadcasts against x
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)  # biased: divide by M
    x_hat = (x - mean) / torch.sqrt(var + eps)
    y = x_hat if weight is None else x_hat * weight.view(shape)
    return y if bias is None else y + bias.view(shape)


@dataclass
class BenchmarkRow:
    """One (shape, implementation) measurement of forward + backward.

    shape: input shape. implementation: one of `IMPLEMENTATIONS`.
    median_ms: median wall time of one forward + backward, in milliseconds.
    ratio_to_native: median_ms / median_ms of "native" on the same shape, same run.
    peak_memory_mb: peak extra memory of one forward + backward (see `measure_peak_memory`),
        None where it cannot be measured (NumPy) or was not asked for.
    memory_ratio_to_primitives: peak_memory_mb / that of "primitives" on the same shape, or None.
    passes: median_ms / the median time of one read + write of the input (`copy_` into a
        tensor allocated beforehand), timed in the same repeats: the time in full-tensor
        passes. The floor for training-mode BN is 8 (6 reads, 2 writes; see benchmarks/README.md).
    threads, dtype, channels_last: the conditions of the measurement.
    """

    shape: tuple
    implementation: str
    median_ms: float
    ratio_to_native: float
    peak_memory_mb: float | None
    memory_ratio_to_primitives: float | None
    passes: float | None = None
    threads: int = 1
    dtype: str = "float32"
    channels_last: bool = False


def _step_native(x, weight, bias, dy):
    F.batch_norm(x, None, None, weight, bias, training=True).backward(dy)


def _step_bncourse(x, weight, bias, dy):
    bncourse_batch_norm(x, None, None, weight, bias, training=True).backward(dy)


def _step_primitives(x, weight, bias, dy):
    batch_norm_primitives(x, weight, bias).backward(dy)


def _step_numpy(x, weight, bias, dy):
    # .numpy() shares memory with the tensors: no copy is timed.
    _, cache = reference.batchnorm_forward(
        x.detach().numpy(), weight.detach().numpy(), bias.detach().numpy()
    )
    reference.batchnorm_backward(dy.numpy(), cache)


_STEPS: dict[str, Callable] = {
    "native": _step_native,
    "bncourse": _step_bncourse,
    "primitives": _step_primitives,
    "numpy": _step_numpy,
}


@contextlib.contextmanager
def _quiet_stderr_fd():
    """Silence file descriptor 2 for a moment.

    torch's profiler (Kineto) writes timestamped "profiler_start/stop" lines straight to fd 2,
    which a Jupyter kernel would copy into the cell output. Python exceptions are unaffected.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure_peak_memory(step: Callable[[], object]) -> float:
    """Peak extra memory (MB, 2**20 bytes) that torch's allocator holds while `step()` runs.

    Method: run `step` under ``torch.profiler.profile(profile_memory=True)``, which records every
    allocation and free of torch's CPU allocator with a timestamp; replay them in time order and
    return the largest running total. That is the memory alive at the worst moment that did not
    exist before the call: for forward + backward it counts the output, everything autograd
    saved, the temporaries of the backward and the new `.grad` tensors (so set `.grad` to None
    first, or they are accumulated in place and not counted). It does not count memory allocated
    outside torch (NumPy) nor the allocator's own overhead.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _quiet_stderr_fd(), torch.profiler.profile(activities=activities,
                                                     profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    alive = peak = 0
    for event in events:
        alive += event.nbytes()  # positive for an allocation, negative for a free
        peak = max(peak, alive)
    return peak / 2**20


def _check_arguments(shapes, implementations, repeats, threads, warmup, known=_STEPS) -> None:
    if isinstance(shapes, (str, bytes)) or not hasattr(shapes, "__iter__"):
        raise TypeError(f"shapes must be a sequence of shapes, got {type(shapes).__name__}")
    if len(shapes) == 0:
        raise ValueError("shapes must contain at least one shape, e.g. ((256, 1024),)")
    for shape in shapes:
        if (not isinstance(shape, (tuple, list)) or len(shape) < 2
                or not all(isinstance(d, int) and d > 0 for d in shape)):
            raise ValueError(
                f"each shape must be a tuple (N, C) or (N, C, *spatial) of positive ints, "
                f"got {shape!r}"
            )
        if shape[0] * math.prod(shape[2:]) < 2:
            raise ValueError(
                f"shape {tuple(shape)} has 1 value per channel; training-mode batch norm "
                f"needs at least 2"
            )
    if isinstance(implementations, str):
        raise TypeError(
            f"implementations must be a sequence of names, got the string {implementations!r} "
            f"(write ({implementations!r},) for a single name)"
        )
    if not isinstance(implementations, tuple):
        raise TypeError(
            f"implementations must be a sequence of names, got {type(implementations).__name__}"
        )
    unknown = [name for name in implementations if name not in known]
    if unknown:
        raise ValueError(
            f"unknown implementation(s) {unknown}; expected names from {tuple(known)} "
            f"(or add one with extra_implementations={{name: step}})"
        )
    if "native" not in implementations:
        raise ValueError(
            f"implementations must include 'native' (every ratio is relative to it), "
            f"got {tuple(implementations)}"
        )
    if len(set(implementations)) != len(implementations):
        raise ValueError(f"implementations must not repeat a name, got {tuple(implementations)}")
    for name, value, minimum in (("repeats", repeats, 1), ("threads", threads, 1),
                                 ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def benchmark_batchnorm(
    shapes=DEFAULT_SHAPES,
    implementations=IMPLEMENTATIONS,
    repeats: int = 15,
    threads: int = 1,
    seed: int = 0,
    *,
    warmup: int = 3,
    dtype: torch.dtype = torch.float32,
    measure_memory: bool = True,
    channels_last: bool = False,
    extra_implementations: dict[str, Callable] | None = None,
) -> list[BenchmarkRow]:
    """Time forward + backward (dense random `dy`) of each implementation on each shape.

    ``ratio = median_ms(implementation) / median_ms(native)``, all implementations interleaved
    in every repeat of the same run (see the module docstring for why).

    Args:
        shapes: input shapes `(N, C)` or `(N, C, *spatial)`.
        implementations: names from `IMPLEMENTATIONS`; must include "native".
        repeats: timed forward + backward calls per implementation and shape (median reported).
        threads: torch intra-op threads during the benchmark (restored afterwards).
        seed: seed of the random input, weight, bias and upstream gradient.
        warmup: untimed calls per implementation and shape before timing.
        dtype: input dtype (float32 or float64).
        measure_memory: also measure `peak_memory_mb` (one extra profiled call each).
        channels_last: store 4-D/5-D inputs (and `dy`) channels-last
            (`torch.channels_last`/`channels_last_3d`); an error for other ranks.
        extra_implementations: more implementations to time beside the built-in ones, each
            ``name -> step(x, weight, bias, dy)`` running one forward + backward (for example a
            `torch.compile`d `batch_norm_primitives`: benchmarks/bench_batchnorm.py
            `--compiled`); name them in `implementations` to time them.

    Returns:
        One `BenchmarkRow` per (shape, implementation), in the order given.
    """
    if not isinstance(shapes, (str, bytes)) and hasattr(shapes, "__iter__"):
        shapes = tuple(shapes)
    if not isinstance(implementations, str) and hasattr(implementations, "__iter__"):
        implementations = tuple(implementations)
    steps = _with_extra_steps(extra_implementations)
    _check_arguments(shapes, implementations, repeats, threads, warmup, known=steps)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__}")
    if channels_last:
        bad = [tuple(shape) for shape in shapes if len(shape) not in (4, 5)]
        if bad:
            raise ValueError(f"channels_last needs 4-D or 5-D shapes (N, C, H, W[, D]), got {bad}")

    with _torch_threads(threads):
        rows = []
        for shape in shapes:
            rows.extend(_benchmark_shape(tuple(shape), implementations, repeats, seed,
                                         warmup, dtype, measure_memory, channels_last,
                                         threads, steps))
        return rows


@contextlib.contextmanager
def _torch_threads(threads: int):
    """Run the body with `torch.set_num_threads(threads)`; restore the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _with_extra_steps(extra) -> dict[str, Callable]:
    """The built-in steps plus `extra` (name -> step), checked."""
    if extra is None:
        return _STEPS
    if not isinstance(extra, dict):
        raise TypeError(
            f"extra_implementations must be a dict of name -> step(x, weight, bias, dy), "
            f"got {type(extra).__name__}"
        )
    for name, step in extra.items():
        if not isinstance(name, str) or name in _STEPS or name == _COPY:
            raise ValueError(
                f"extra_implementations: {name!r} must be a new name, not one of "
                f"{tuple(_STEPS) + (_COPY,)}"
            )
        if not callable(step):
            raise TypeError(
                f"extra_implementations[{name!r}] must be callable as step(x, weight, bias, "
                f"dy), got {type(step).__name__}"
            )
    return {**_STEPS, **extra}


_COPY = "copy"  # the reference pass, timed among the implementations


def _benchmark_shape(shape, implementations, repeats, seed, warmup, dtype, measure_memory,
                     channels_last=False, threads=1, known_steps=_STEPS):
    generator = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = torch.randn(shape, generator=generator, dtype=dtype)
    weight = (1.0 + 0.1 * torch.randn(C, generator=generator, dtype=dtype)).requires_grad_()
    bias = (0.1 * torch.randn(C, generator=generator, dtype=dtype)).requires_grad_()
    dy = torch.randn(shape, generator=generator, dtype=dtype)  # dense
    if channels_last:
        memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x, dy = x.contiguous(memory_format=memory_format), dy.contiguous(memory_format=memory_format)
    x.requires_grad_()
    copy_target = torch.empty_like(x)
    steps = dict(known_steps)
    steps[_COPY] = lambda x, weight, bias, dy: copy_target.copy_(x.detach())

    timed = tuple(implementations) + (_COPY,)

    def run(name):
        # Fresh gradients every call, as after optimizer.zero_grad(set_to_none=True).
        x.grad = weight.grad = bias.grad = None
        steps[name](x, weight, bias, dy)

    for _ in range(warmup):
        for name in timed:
            run(name)

    times = {name: [] for name in timed}
    order = list(timed)
    shuffler = random.Random(seed)
    for _ in range(repeats):
        shuffler.shuffle(order)  # a new order every repeat: no fixed neighbour (see module doc)
        for name in order:
            x.grad = weight.grad = bias.grad = None
            start = time.perf_counter()
            steps[name](x, weight, bias, dy)
            times[name].append(time.perf_counter() - start)
    median_ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    copy_ms = median_ms.pop(_COPY)

    memory = {name: None for name in implementations}
    if measure_memory:
        for name in implementations:
            if name != "numpy":  # NumPy does not allocate through torch
                x.grad = weight.grad = bias.grad = None
                memory[name] = measure_peak_memory(lambda: steps[name](x, weight, bias, dy))
    x.grad = weight.grad = bias.grad = None

    rows = []
    for name in implementations:
        mem, mem_prim = memory[name], memory.get("primitives")
        rows.append(BenchmarkRow(
            shape=shape,
            implementation=name,
            median_ms=median_ms[name],
            ratio_to_native=median_ms[name] / median_ms["native"],
            peak_memory_mb=mem,
            memory_ratio_to_primitives=(mem / mem_prim if mem is not None and mem_prim else None),
            passes=median_ms[name] / copy_ms if copy_ms > 0 else None,
            threads=threads,
            dtype=str(dtype).replace("torch.", ""),
            channels_last=channels_last,
        ))
    return rows


def format_benchmark_table(rows) -> str:
    """A Markdown table of `BenchmarkRow`s, one line per (shape, implementation)."""
    rows = list(rows)
    if not all(isinstance(row, BenchmarkRow) for row in rows):
        raise TypeError("rows must be BenchmarkRow objects, as returned by benchmark_batchnorm")

    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    lines = [
        "| shape | implementation | median ms | x native | passes | peak MB "
        "| x primitives memory |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        layout = ", channels-last" if row.channels_last else ""
        lines.append(
            f"| {tuple(row.shape)}{layout} | {row.implementation} | {row.median_ms:.3f} "
            f"| {row.ratio_to_native:.2f} | {fmt(row.passes, '.1f')} "
            f"| {fmt(row.peak_memory_mb, '.2f')} "
            f"| {fmt(row.memory_ratio_to_primitives, '.2f')} |"
        )
    return "\n".join(lines)


# --- one training step of lesson 06's networks -----------------------------------------------

STEP_MODELS = ("mlp", "cnn")


@dataclass
class StepRow:
    """One (model, implementation) measurement of a training step.

    model: "mlp" (lesson 06's sigmoid MLP 64-100-100-100-10, BN after each hidden Linear) or
        "cnn" (its small Inception-style CNN, `inception_cnn(stem=8, widths=((4, 4, 4, 4),
        (8, 8, 8, 8)))` on 8x8 digits, 11 BN layers). Batch 60 for both.
    implementation: "torch" (`torch.nn.BatchNorm1d/2d`) or "bncourse" (`bncourse.nn`'s).
    median_ms: median wall time of one step (zero_grad, forward, cross-entropy, backward,
        SGD update). ratio_to_torch: median_ms / that of "torch", same run.
    """

    model: str
    implementation: str
    median_ms: float
    ratio_to_torch: float
    threads: int = 1


def _step_model(model: str, norm_module, seed: int):
    from bncourse.models import inception_cnn, mlp  # models sit beside nn; imported on use

    torch.manual_seed(seed)
    if model == "mlp":
        net = mlp([64, 100, 100, 100, 10], torch.nn.Sigmoid, norm=norm_module.BatchNorm1d)
        x = torch.randn(60, 64)
    else:
        net = inception_cnn(1, 10, stem=8, widths=((4, 4, 4, 4), (8, 8, 8, 8)),
                            norm=norm_module.BatchNorm2d)
        x = torch.randn(60, 1, 8, 8)
    y = torch.randint(10, (60,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    return step


def benchmark_training_steps(models=STEP_MODELS, repeats: int = 100, threads: int = 1,
                             seed: int = 0, *, warmup: int = 10) -> list[StepRow]:
    """Time one SGD step of lesson 06's MLP and CNN with torch's and with bncourse's BN layers.

    The two networks of a model start from the same weights (same seed); their steps are
    interleaved in a fresh random order every repeat, the median reported (as
    `benchmark_batchnorm`).

    Args:
        models: names from `STEP_MODELS`.
        repeats: timed steps per network (median reported).
        threads: torch intra-op threads during the benchmark (restored afterwards).
        seed: seed of the weights and the batch.
        warmup: untimed steps per network first.

    Returns:
        Two `StepRow`s per model, "torch" then "bncourse".
    """
    import bncourse.nn as bncourse_nn

    if isinstance(models, str) or not hasattr(models, "__iter__"):
        raise TypeError(f"models must be a sequence of names from {STEP_MODELS}, got {models!r}")
    models = tuple(models)
    unknown = [m for m in models if m not in STEP_MODELS]
    if unknown or not models:
        raise ValueError(f"models must be names from {STEP_MODELS}, got {models}")
    for name, value, minimum in (("repeats", repeats, 1), ("threads", threads, 1),
                                 ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    with _torch_threads(threads):
        rows = []
        for model in models:
            steps = {"torch": _step_model(model, torch.nn, seed),
                     "bncourse": _step_model(model, bncourse_nn, seed)}
            for _ in range(warmup):
                for step in steps.values():
                    step()
            times = {name: [] for name in steps}
            order = list(steps)
            shuffler = random.Random(seed)
            for _ in range(repeats):
                shuffler.shuffle(order)
                for name in order:
                    start = time.perf_counter()
                    steps[name]()
                    times[name].append(time.perf_counter() - start)
            median_ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
            for name in steps:
                rows.append(StepRow(model, name, median_ms[name],
                                    median_ms[name] / median_ms["torch"], threads))
        return rows


def format_step_table(rows) -> str:
    """A Markdown table of `StepRow`s."""
    rows = list(rows)
    if not all(isinstance(row, StepRow) for row in rows):
        raise TypeError("rows must be StepRow objects, as returned by benchmark_training_steps")
    lines = ["| model | BN layers | threads | median ms per step | x torch.nn |",
             "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.model} | {row.implementation} | {row.threads} "
                     f"| {row.median_ms:.3f} | {row.ratio_to_torch:.2f} |")
    return "\n".join(lines)
