"""Forward + backward speed of batch normalization: bncourse against torch's native kernel.

    python benchmarks/bench_batchnorm.py [--runs 3] [--threads 1,2] [--repeats N] [--tuned-malloc]
                                         [--compiled]

Three sections (a fourth with `--compiled`), each run `--runs` times (see benchmarks/README.md
for the method and a table):

1. The lesson-04 table: native, bncourse, primitives and NumPy on the three default shapes,
   1 thread, with peak memory.
2. native vs bncourse on small and large shapes (2-D, recurrent-cell sized, 4-D, 5-D,
   channels-last, float64) at each thread count, with each time also in full-tensor passes.
3. One SGD step of lesson 06's MLP and CNN with `bncourse.nn` vs `torch.nn` BN layers.
4. With `--compiled` only: the same shapes with a third row, `compiled`: lesson 04's
   `batch_norm_primitives` (the same maths in plain tensor operations) through
   `torch.compile` (TorchInductor, which writes and compiles fused C++ loops with the system's
   compiler), with the compile time of each shape; the compiler's caches go to a fresh folder
   so each compile is a cold one.

A last table gives, per row, the range of the ratio to native over the runs and the target
(issue 24): at most 2x native under 256k values, at most 1x from 256k values, at most 1.25x
torch.nn for a training step. `--tuned-malloc` re-runs the script in a child process with
glibc's allocator told to keep freed memory (MALLOC_MMAP_THRESHOLD_ etc.), which removes the
first-touch page faults of fresh outputs from both implementations alike.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from bncourse.profiling import (DEFAULT_SHAPES, batch_norm_primitives, benchmark_batchnorm,
                                benchmark_training_steps, format_benchmark_table,
                                format_step_table)

SMALL = 1 << 18  # 262144 values: the boundary between the 2x and the 1x target

# (shape, dtype, channels_last, what it stands for)
GRID = (
    ((32, 64), torch.float32, False, "small 2-D"),
    ((60, 100), torch.float32, False, "lesson 06 MLP layer"),
    ((32, 512), torch.float32, False, "recurrent cell (4 gates x 128, batch 32)"),
    ((128, 512), torch.float32, False, "2-D"),
    ((60, 8, 8, 8), torch.float32, False, "lesson 06 CNN layer"),
    ((60, 8, 8, 8), torch.float32, True, "lesson 06 CNN layer, channels-last"),
    ((1024, 256), torch.float32, False, "large 2-D"),
    ((256, 1024), torch.float32, False, "large 2-D, wide"),
    ((256, 1024), torch.float64, False, "large 2-D, float64"),
    ((32, 128, 16, 16), torch.float32, False, "conv"),
    ((32, 128, 16, 16), torch.float32, True, "conv, channels-last"),
    ((32, 128, 16, 16), torch.float64, False, "conv, float64"),
    ((64, 64, 32, 32), torch.float32, False, "early conv"),
    ((64, 64, 32, 32), torch.float32, True, "early conv, channels-last"),
    ((8, 32, 8, 16, 16), torch.float32, False, "3-D conv (BatchNorm3d)"),
)

TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296",
                "MALLOC_TOP_PAD_": "1073741824"}


def _repeats(shape, base: int) -> int:
    """More repeats for fast rows: the median of small shapes needs many samples."""
    numel = math.prod(shape)
    return base * 10 if numel < SMALL // 4 else base * 3 if numel < SMALL else base


def _target(numel: int) -> float:
    return 2.0 if numel < SMALL else 1.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15,
                        help="timed calls per large row (small rows take 3x or 10x as many)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuned-malloc", action="store_true",
                        help="run in a child with glibc's allocator keeping freed memory")
    parser.add_argument("--sections", default="1,2,3", help="which sections to run")
    parser.add_argument("--compiled", action="store_true",
                        help="also time torch.compile of batch_norm_primitives (section 4)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
        sections = {int(s) for s in args.sections.split(",")}
    except ValueError:
        parser.error("--threads and --sections take comma-separated integers, e.g. 1,2")
    if any(t < 1 for t in threads):
        parser.error(f"--threads must be positive, got {args.threads}")
    if args.tuned_malloc and os.environ.get("MALLOC_TOP_PAD_") is None:
        env = dict(os.environ, **TUNED_MALLOC)
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--tuned-malloc"]
        sys.exit(subprocess.call([sys.executable, __file__, "--tuned-malloc", *rest], env=env))

    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical cores, threads={threads}, repeats={args.repeats}, "
          f"runs={args.runs}")
    malloc = {k: os.environ[k] for k in TUNED_MALLOC if k in os.environ}
    print(f"allocator: glibc {'with ' + str(malloc) if malloc else 'defaults'}")
    if hasattr(os, "getloadavg"):
        print(f"load average before: {os.getloadavg()[0]:.2f}")

    table_runs, grid_runs, step_runs, compiled_runs = [], [], [], []
    for run in range(args.runs):
        print(f"\n## run {run + 1} of {args.runs}")
        if 1 in sections:
            rows = benchmark_batchnorm(DEFAULT_SHAPES, repeats=args.repeats, threads=1,
                                       seed=args.seed)
            table_runs.append(rows)
            print("\n### lesson-04 table, 1 thread\n")
            print(format_benchmark_table(rows))
        if 2 in sections:
            grid = []
            for t in threads:
                for shape, dtype, channels_last, _ in GRID:
                    grid.extend(benchmark_batchnorm(
                        (shape,), ("native", "bncourse"), repeats=_repeats(shape, args.repeats),
                        threads=t, seed=args.seed, dtype=dtype, measure_memory=False,
                        channels_last=channels_last))
            grid_runs.append(grid)
            print("\n### native vs bncourse\n")
            print(_grid_table(grid))
        if 3 in sections:
            steps = []
            for t in threads:
                steps.extend(benchmark_training_steps(repeats=10 * args.repeats, threads=t,
                                                      seed=args.seed))
            step_runs.append(steps)
            print("\n### one training step, lesson 06\n")
            print(format_step_table(steps))
        if args.compiled:
            compiled_runs.append(_compiled_section(threads, args.repeats, args.seed))

    print(f"\n## across {args.runs} run(s): ratio min - max, and the target\n")
    if grid_runs:
        print("| shape | dtype | layout | threads | x native (min - max) | passes native "
              "| passes bncourse | target | met |")
        print("|---|---|---|---:|---:|---:|---:|---:|---|")
        for i, row in enumerate(grid_runs[0]):
            if row.implementation != "bncourse":
                continue
            ratios = [g[i].ratio_to_native for g in grid_runs]
            native = _same_input(grid_runs[0], row, "native")
            target = _target(math.prod(row.shape))
            print(f"| {_input(row)} | {min(ratios):.2f} - {max(ratios):.2f} "
                  f"| {native.passes:.1f} | {row.passes:.1f} | <= {target:.2f} "
                  f"| {_met(ratios, target)} |")
    if step_runs:
        print("\n| model | threads | x torch.nn (min - max) | target | met |")
        print("|---|---:|---:|---:|---|")
        for i, row in enumerate(step_runs[0]):
            if row.implementation != "bncourse":
                continue
            ratios = [s[i].ratio_to_torch for s in step_runs]
            print(f"| {row.model} | {row.threads} | {min(ratios):.2f} - {max(ratios):.2f} "
                  f"| <= 1.25 | {_met(ratios, 1.25)} |")
    if compiled_runs:
        print("\n| shape | dtype | layout | threads | compiled x native (min - max) "
              "| bncourse x native | compile s (min - max) | target | met |")
        print("|---|---|---|---:|---:|---:|---:|---:|---|")
        for i, (row, _) in enumerate(compiled_runs[0]):
            if row.implementation != "compiled":
                continue
            ratios = [c[i][0].ratio_to_native for c in compiled_runs]
            ours = [_same_input([r for r, _ in c], row, "bncourse").ratio_to_native
                    for c in compiled_runs]
            compile_s = [c[i][1] for c in compiled_runs]
            target = _target(math.prod(row.shape))
            print(f"| {_input(row)} | {min(ratios):.2f} - {max(ratios):.2f} "
                  f"| {min(ours):.2f} - {max(ours):.2f} "
                  f"| {min(compile_s):.1f} - {max(compile_s):.1f} | <= {target:.2f} "
                  f"| {_met(ratios, target)} |")
    if table_runs:
        print("\n| shape | implementation | x native (min - max), lesson-04 table |")
        print("|---|---|---:|")
        for i, row in enumerate(table_runs[0]):
            ratios = [rows[i].ratio_to_native for rows in table_runs]
            print(f"| {row.shape} | {row.implementation} | {min(ratios):.2f} - {max(ratios):.2f} |")
    if hasattr(os, "getloadavg"):
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def _compiled_section(threads, repeats, seed):
    """Section 4: native, bncourse and torch.compile(batch_norm_primitives) on the grid.

    Returns [(row, compile seconds)]: the compile time is that of the first forward +
    backward of a shape (the compiled forward and backward graphs), each with an empty cache
    folder of its own, so nothing compiled before (in this run or an earlier one) is reused."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    scratch = tempfile.mkdtemp(prefix="bench-inductor-")
    dynamo = torch._dynamo.config
    for limit in ("cache_size_limit", "recompile_limit"):  # one entry per shape and layout
        if hasattr(dynamo, limit):
            setattr(dynamo, limit, 4 * len(GRID))
    rows = []
    for t in threads:
        # The generated C++ loops bake in the thread count: compile afresh for each.
        torch._dynamo.reset()
        torch.set_num_threads(t)
        compiled = torch.compile(batch_norm_primitives, dynamic=False)

        def step(x, weight, bias, dy):
            compiled(x, weight, bias).backward(dy)

        for shape, dtype, channels_last, _ in GRID:
            with temporary_cache_dir(tempfile.mkdtemp(dir=scratch)):
                seconds = _compile_seconds(step, shape, dtype, channels_last)
            grid = benchmark_batchnorm(
                (shape,), ("native", "bncourse", "compiled"),
                repeats=_repeats(shape, repeats), threads=t, seed=seed, dtype=dtype,
                measure_memory=False, channels_last=channels_last,
                extra_implementations={"compiled": step})
            rows.extend((row, seconds) for row in grid)
    torch._dynamo.reset()  # unload the compiled code before its folder goes
    shutil.rmtree(scratch, ignore_errors=True)
    print("\n### torch.compile(batch_norm_primitives) beside native and bncourse\n")
    print(_grid_table([row for row, _ in rows]))
    print("\ncompile seconds, first forward + backward of each row, cold cache: "
          + ", ".join(f"{seconds:.1f}" for row, seconds in rows
                      if row.implementation == "compiled"))
    return rows


def _compile_seconds(step, shape, dtype, channels_last) -> float:
    """Wall time of the first (compiling) forward + backward of `step` on this input."""
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=_CHANNELS_LAST[len(shape)])
    x.requires_grad_()
    C = shape[1]
    weight = torch.ones(C, dtype=dtype, requires_grad=True)
    bias = torch.zeros(C, dtype=dtype, requires_grad=True)
    start = time.perf_counter()
    step(x, weight, bias, torch.randn_like(x))
    return time.perf_counter() - start


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _same_input(rows, like, implementation):
    """The row of `implementation` timed on the same input (shape, dtype, layout, threads)."""
    key = (like.shape, like.dtype, like.channels_last, like.threads)
    return next(row for row in rows if row.implementation == implementation
                and (row.shape, row.dtype, row.channels_last, row.threads) == key)


def _input(row) -> str:
    """The shape, dtype, layout and threads cells of a table row."""
    layout = "channels-last" if row.channels_last else "contiguous"
    return f"{row.shape} | {row.dtype} | {layout} | {row.threads}"


def _met(ratios, target) -> str:
    """yes: every run within the target; partly: some; **no**: none."""
    if max(ratios) <= target:
        return "yes"
    return "partly" if min(ratios) <= target else "**no**"


def _grid_table(rows) -> str:
    lines = ["| shape | dtype | layout | threads | implementation | median ms | x native | passes |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {_input(row)} | {row.implementation} | {row.median_ms:.3f} | {row.ratio_to_native:.2f} "
                     f"| {row.passes:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
