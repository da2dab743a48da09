"""Lesson 11: K processes on one machine with torch.distributed (gloo), and what BN does there.

`launch(fn, nprocs, *args)` starts `nprocs` processes with `torch.multiprocessing` (forkserver
or spawn: fresh interpreters, never a fork of the caller), each with a gloo process group on a
free local port, calls ``fn(rank, world_size, *args)`` in each, and returns their results in
rank order. A rank that raises makes `launch` stop every process
and raise at once (nothing waits for gloo's own timeout); so does a run past `timeout`.

The same training code runs unchanged under torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT (and so across machines with ``--nnodes``)::

    torchrun --nproc-per-node 4 -m bncourse.cases.distributed --norm sync
    python -m bncourse.cases.distributed --nproc 4 --norm sync   # the course's launcher

Experiments (called in every rank): `bn_parity` (one batch split across ranks, SyncBN and
per-replica BN) and `train_digits` (a small BN MLP, data parallel, per-replica or synchronised
statistics, or one process with the whole batch).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import queue as queue_module
import socket
import sys
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Imported here, not in the functions, so that the forkserver preloads them (see `_context`).
from bncourse.data import load_digits
from bncourse.models import mlp
from bncourse.nn import BatchNorm1d, SyncBatchNorm, convert_sync_batchnorm

__all__ = ["free_port", "launch", "init_from_env", "parity_batch", "bn_parity", "train_digits",
           "count_collectives", "time_bn_layer", "lesson_experiments", "main"]

NORMS = ("per_replica", "sync", "full")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain(value):
    """Tensors to NumPy arrays, recursively: results cross the process boundary as plain data."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _worker(rank, world_size, port, timeout, fn, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # K processes share the machine's cores
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        results.put(("ok", rank, _plain(fn(rank, world_size, *args))))
    except BaseException as exc:  # reported to the parent, which stops the other ranks
        # Reported before leaving the group: leaving makes the others fail with a
        # "connection reset" that would hide this, the cause.
        results.put(("error", rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# Errors a rank gets because another rank failed or left (gloo's transport), not a cause.
_PEER_FAILURE = ("gloo/transport", "Connection reset", "Connection closed")


def _first_cause(first, results, grace: float = 0.5):
    """The error to report: of the errors that arrive within `grace` s, the first that is not
    a consequence of another rank's failure."""
    errors = [first]
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            status, rank, value = results.get(timeout=0.05)
        except queue_module.Empty:
            continue
        if status == "error":
            errors.append((rank, value))
    causes = [e for e in errors if not any(mark in e[1] for mark in _PEER_FAILURE)]
    return (causes or errors)[0]


def _stop(processes) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def _context(start_method: str):
    """A torch.multiprocessing context; "forkserver" preloads torch and this module once.

    Both start fresh interpreters, never a fork of the caller (a Jupyter kernel has threads).
    Spawn imports torch in every process of every launch: measured here, 10-12 s for 3
    processes on 2 busy cores; the forkserver imports it once, and later launches take 0.1-1 s.
    """
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
    if start_method == "forkserver" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["bncourse.cases.distributed"])  # no effect once it runs
        return ctx
    return mp.get_context("spawn")


def launch(fn, nprocs: int, *args, timeout: float = 60.0, start_method: str = "forkserver"):
    """Run ``fn(rank, nprocs, *args)`` in `nprocs` gloo processes; their results by rank.

    fn must be importable (a module-level function) and return plain data or tensors (returned
    as NumPy arrays). Raises RuntimeError with the failing rank's traceback as soon as one rank
    raises or dies, TimeoutError after `timeout` seconds; either way every process is stopped.
    start_method: "forkserver" (fast after the first launch) or "spawn" (see `_context`).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(nprocs, int) or isinstance(nprocs, bool) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive int, got {nprocs!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive (seconds), got {timeout!r}")
    ctx = _context(start_method)
    results = ctx.Queue()
    port = free_port()
    processes = [ctx.Process(target=_worker, daemon=True,
                             args=(rank, nprocs, port, timeout, fn, args, results))
                 for rank in range(nprocs)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + timeout
    out: dict[int, object] = {}
    try:
        while len(out) < nprocs:
            try:
                status, rank, value = results.get(timeout=0.05)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(processes)
                        if r not in out and not p.is_alive() and p.exitcode not in (0, None)]
                if dead and results.empty():
                    raise RuntimeError(f"rank {dead[0]} died with exit code "
                                       f"{processes[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"launch: {nprocs} processes still running after "
                                       f"{timeout:g} s (ranks done: {sorted(out)})") from None
                continue
            if status == "error":
                rank, value = _first_cause((rank, value), results)
                raise RuntimeError(f"rank {rank} of {nprocs} failed:\n{value}")
            out[rank] = value
        for p in processes:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _stop(processes)
        results.close()
    return [out[r] for r in range(nprocs)]


def init_from_env(timeout: float = 60.0) -> tuple[int, int]:
    """Join the gloo group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise RuntimeError(f"not started by torchrun: {', '.join(missing)} not set")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()


# --- experiments (run in every rank) -------------------------------------------------------

def _split(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def parity_batch(sizes, channels: int, seed: int = 0, offset: float = 3.0):
    """The whole float64 batch `x` `(sum(sizes), C)`, upstream gradient `dy`, gamma, beta."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = offset + 2.0 * torch.randn(n, channels, generator=g, dtype=torch.float64)
    x += torch.linspace(0, 2, n, dtype=torch.float64).unsqueeze(1)  # ranks see shifted data
    dy = torch.randn(n, channels, generator=g, dtype=torch.float64)
    gamma = 1 + 0.3 * torch.randn(channels, generator=g, dtype=torch.float64)
    beta = torch.randn(channels, generator=g, dtype=torch.float64)
    return x, dy, gamma, beta


def bn_parity(rank: int, world_size: int, sizes, channels: int = 4, seed: int = 0) -> dict:
    """One training step of SyncBN and of per-replica BN on this rank's part of a batch.

    Returns this rank's output `y`, input gradient `dx`, local parameter gradients and running
    statistics for both, float64.
    """
    x, dy, gamma, beta = parity_batch(sizes, channels, seed)
    part = _split(sizes, rank)
    out = {}
    for name, cls in (("sync", SyncBatchNorm), ("per_replica", BatchNorm1d)):
        bn = cls(channels, dtype=torch.float64)
        with torch.no_grad():
            bn.weight.copy_(gamma)
            bn.bias.copy_(beta)
        x_local = x[part].clone().requires_grad_(True)
        if x_local.shape[0] == 0 and name == "per_replica":
            out[name] = None  # BN of an empty batch: nothing to compare
            continue
        y = bn(x_local)
        y.backward(dy[part])
        out[name] = {"y": y, "dx": x_local.grad, "dweight": bn.weight.grad,
                     "dbias": bn.bias.grad, "running_mean": bn.running_mean,
                     "running_var": bn.running_var}
    return out


def train_digits(rank: int, world_size: int, norm: str = "sync", per_device_batch: int = 2,
                 steps: int = 300, lr: float = 0.05, seed: int = 0, hidden: int = 64) -> dict:
    """Data-parallel SGD on sklearn digits with a BN MLP (64-hidden-hidden-10, ReLU, float64).

    Each step draws one global batch of ``world_size * per_device_batch`` samples (the same
    generator on every rank) and rank r takes its r-th slice. Gradients are all-reduced as
    DDP would (one flat buffer); each rank's loss is its share of the global mean, so the sum
    is the full-batch gradient. norm: "per_replica" (BatchNorm1d on the local slice), "sync"
    (SyncBatchNorm), or "full" (world_size 1 holding the whole global batch; pass
    per_device_batch = the global batch). Returns the loss per step, the test accuracy in eval
    mode (rank 0's running statistics), and the median wall time of a step in seconds.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    distributed = world_size > 1
    data = load_digits(seed=seed)
    x_train, y_train = data.x_train.double(), data.y_train
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = mlp([x_train.shape[1], hidden, hidden, 10], activation=torch.nn.ReLU,
                norm=BatchNorm1d).double()
    if norm == "sync":
        model = convert_sync_batchnorm(model)
    params = list(model.parameters())
    # SGD with momentum 0.9 as torch.optim.SGD computes it, written out: torch.optim's first
    # use imports torch._dynamo, measured at 4.5 s in each process.
    velocity = [torch.zeros_like(p) for p in params]
    g = torch.Generator().manual_seed(seed + 1)
    batch = world_size * per_device_batch
    mine = slice(rank * per_device_batch, (rank + 1) * per_device_batch)
    losses, times = [], []
    for _ in range(steps):
        idx = torch.randint(0, x_train.shape[0], (batch,), generator=g)[mine]
        start = time.perf_counter()
        logits = model(x_train[idx])
        loss = torch.nn.functional.cross_entropy(logits, y_train[idx], reduction="sum") / batch
        for p in params:
            p.grad = None
        loss.backward()
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [loss.detach().view(1)])
        if distributed:  # what DDP does, in one bucket
            dist.all_reduce(flat)
        offset = 0
        with torch.no_grad():
            for p, v in zip(params, velocity):
                v.mul_(0.9).add_(flat[offset:offset + p.numel()].view_as(p))  # v = 0.9 v + g
                p.sub_(v, alpha=lr)
                offset += p.numel()
        times.append(time.perf_counter() - start)
        losses.append(float(flat[-1]))
    model.eval()
    with torch.no_grad():
        predictions = model(data.x_test.double()).argmax(1)
    accuracy = float((predictions == data.y_test).double().mean())
    return {"loss": np.array(losses), "test_accuracy": accuracy,
            "step_time": float(np.median(times))}


def count_collectives(rank: int, world_size: int, norm: str, per_device_batch: int = 2) -> dict:
    """How many collectives one training step of `train_digits` makes, by kind."""
    counts = {"all_gather": 0, "all_reduce": 0}
    originals = {name: getattr(dist, name) for name in counts}

    def counting(name):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)
        return wrapper

    for name in counts:
        setattr(dist, name, counting(name))
    try:
        train_digits(rank, world_size, norm=norm, per_device_batch=per_device_batch, steps=1)
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    return counts


def time_bn_layer(rank: int, world_size: int, batch: int = 2, channels: int = 64,
                  repeats: int = 100) -> dict:
    """Median seconds of one forward + backward of BatchNorm1d and of SyncBatchNorm on a
    `(batch, channels)` input, alternating the two in one loop so that a change in the
    machine's load hits both alike."""
    layers = {"per_replica": BatchNorm1d(channels), "sync": SyncBatchNorm(channels)}
    x = torch.randn(batch, channels, requires_grad=True)
    dy = torch.randn(batch, channels)
    times = {name: [] for name in layers}
    for _ in range(repeats):
        for name, layer in layers.items():
            dist.barrier()  # start together: a rank waiting in a collective would count
            start = time.perf_counter()
            layer(x).backward(dy)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def lesson_experiments(rank: int, world_size: int, seeds=(0, 1), steps: int = 150,
                       per_device_batch: int = 2) -> dict:
    """Lesson 11's training measurements in one launch: collectives per step, and
    `train_digits` for each norm and seed."""
    out = {"collectives": {norm: count_collectives(rank, world_size, norm, per_device_batch)
                           for norm in ("per_replica", "sync")},
           "layer_time": time_bn_layer(rank, world_size),
           "train": {}}
    for seed in seeds:
        for norm in ("per_replica", "sync"):
            out["train"][f"{norm}/{seed}"] = train_digits(
                rank, world_size, norm=norm, per_device_batch=per_device_batch, steps=steps,
                seed=seed)
    return out


# --- the script: torchrun or the course's launcher ------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bncourse.cases.distributed",
                                description="Lesson 11: data-parallel BN MLP on digits.")
    p.add_argument("--norm", choices=NORMS[:2], default="sync")
    p.add_argument("--per-device-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=2,
                   help="processes to launch when not started by torchrun")
    return p


def main(argv=None) -> dict:
    """Train once; print one JSON line (rank 0) with the test accuracy and final loss."""
    args = _parser().parse_args(argv)
    kwargs = dict(norm=args.norm, per_device_batch=args.per_device_batch, steps=args.steps,
                  lr=args.lr, seed=args.seed)
    if "RANK" in os.environ:  # started by torchrun: this process is one rank
        torch.set_num_threads(1)
        rank, world_size = init_from_env()
        try:
            result = train_digits(rank, world_size, **kwargs)
        finally:
            dist.destroy_process_group()
    else:
        world_size = args.nproc
        rank, result = 0, launch(_train_kwargs, world_size, kwargs)[0]
    summary = {"norm": args.norm, "world_size": world_size,
               "global_batch": world_size * args.per_device_batch,
               "test_accuracy": round(result["test_accuracy"], 4),
               "final_loss": round(float(np.mean(result["loss"][-50:])), 4)}
    if rank == 0:
        print(json.dumps(summary), flush=True)
    return summary


def _train_kwargs(rank, world_size, kwargs):
    return train_digits(rank, world_size, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
