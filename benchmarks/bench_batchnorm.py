"""Forward + backward speed and memory of batch normalization implementations.

    python benchmarks/bench_batchnorm.py [--repeats N] [--threads 1] [--runs 1]

Times torch's native kernel, `bncourse.nn.batch_norm`, autograd on primitives and the NumPy
reference with `bncourse.profiling.benchmark_batchnorm` and prints a Markdown table of medians
and ratios to native (see benchmarks/README.md for the method and a measured table).
With `--runs R` the whole benchmark runs R times and a last table shows, per row, the
smallest and largest ratio to native across the runs: the spread you should expect.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch

from bncourse.profiling import DEFAULT_SHAPES, benchmark_batchnorm, format_benchmark_table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per row (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole benchmark")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")

    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical cores, threads={args.threads}, repeats={args.repeats}")
    if hasattr(os, "getloadavg"):
        print(f"load average before: {os.getloadavg()[0]:.2f}")

    runs = []
    for run in range(args.runs):
        rows = benchmark_batchnorm(DEFAULT_SHAPES, repeats=args.repeats, threads=args.threads,
                                   seed=args.seed)
        runs.append(rows)
        print(f"\nrun {run + 1} of {args.runs}\n")
        print(format_benchmark_table(rows))

    if args.runs > 1:
        print("\nratio to native across runs (min - max)\n")
        print("| shape | implementation | x native, min | x native, max |")
        print("|---|---|---:|---:|")
        for i, row in enumerate(runs[0]):
            ratios = [rows[i].ratio_to_native for rows in runs]
            print(f"| {row.shape} | {row.implementation} | {min(ratios):.2f} | {max(ratios):.2f} |")
    if hasattr(os, "getloadavg"):
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
