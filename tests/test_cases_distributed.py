"""bncourse.cases.distributed: the launcher (results, failures, timeouts), the data-parallel
training of lesson 11, and the same script under torchrun."""
import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bncourse.cases import distributed as D


def rank_info(rank, world_size, scale):
    import torch.distributed as dist

    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return {"rank": rank, "world": world_size, "sum": float(t), "tensor": torch.ones(2) * scale}


def sleeper(rank, world_size):
    time.sleep(600 if rank == 1 else 0)
    return rank


def dies(rank, world_size):
    if rank == 0:
        os._exit(3)
    time.sleep(600)


def test_free_port_is_a_port():
    assert 1024 <= D.free_port() < 65536


def test_launch_returns_results_in_rank_order_as_plain_data():
    results = D.launch(rank_info, 3, 2.0, timeout=40)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert all(r["world"] == 3 and r["sum"] == 3.0 for r in results)
    assert isinstance(results[0]["tensor"], np.ndarray)
    np.testing.assert_array_equal(results[2]["tensor"], [2.0, 2.0])


def test_launch_with_spawn():
    # One process: spawn imports torch afresh in each (the reason the forkserver is the default).
    assert D.launch(rank_info, 1, 1.0, start_method="spawn", timeout=60)[0]["sum"] == 0.0


def test_a_hanging_rank_times_out_and_every_process_is_stopped():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"still running after 3 s \(ranks done: \[0\]\)"):
        D.launch(sleeper, 2, timeout=3)
    assert time.monotonic() - start < 12
    assert not multiprocessing.active_children()  # the sleeping rank was stopped


def test_a_rank_that_dies_fails_fast():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 0 died with exit code 3"):
        D.launch(dies, 2, timeout=40)
    assert time.monotonic() - start < 15


BAD_LAUNCHES = [
    (("not callable", 2), {}, TypeError, "fn must be callable"),
    ((rank_info, 0), {}, ValueError, "nprocs must be a positive int"),
    ((rank_info, 2), {"timeout": 0}, ValueError, "timeout must be positive"),
    ((rank_info, 2), {"start_method": "fork"}, ValueError, "start_method must be"),
]


@pytest.mark.parametrize("args, kwargs, exception, message", BAD_LAUNCHES,
                         ids=[b[-1] for b in BAD_LAUNCHES])
def test_bad_launch_arguments(args, kwargs, exception, message):
    with pytest.raises(exception, match=message):
        D.launch(*args, **kwargs)


def test_init_from_env_needs_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="not started by torchrun: RANK, WORLD_SIZE"):
        D.init_from_env()


def test_train_digits_rejects_an_unknown_norm():
    with pytest.raises(ValueError, match="norm must be one of"):
        D.train_digits(0, 1, norm="group")


@pytest.fixture(scope="module")
def experiments():
    """`lesson_experiments` on 2 processes x 3 samples for 20 steps (one launch)."""
    return D.launch(D.lesson_experiments, 2, (0,), 20, 3, timeout=60)


@pytest.fixture(scope="module")
def trained(experiments):
    """Per norm, the runs of every rank; and one process with the whole batch of 6."""
    results = {norm: [rank["train"][f"{norm}/0"] for rank in experiments]
               for norm in ("sync", "per_replica")}
    results["full"] = [D.train_digits(0, 1, norm="full", per_device_batch=6, steps=20)]
    return results


def test_sync_training_equals_one_process_with_the_whole_batch(trained):
    sync, full = trained["sync"], trained["full"][0]
    for rank in sync:  # every rank sees the same global loss
        np.testing.assert_allclose(rank["loss"], full["loss"], rtol=1e-9, atol=1e-12)
    assert abs(sync[0]["test_accuracy"] - full["test_accuracy"]) < 1e-12


def test_per_replica_training_differs(trained):
    gap = np.abs(trained["per_replica"][0]["loss"] - trained["full"][0]["loss"]).max()
    assert gap > 1e-3
    assert trained["per_replica"][0]["step_time"] > 0


def test_the_script_under_torchrun_prints_what_the_launcher_prints(capsys):
    args = ["--norm", "sync", "--steps", "20", "--per-device-batch", "3"]
    ours = D.main(args + ["--nproc", "2"])
    assert json.loads(capsys.readouterr().out) == ours
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "bncourse.cases.distributed"] + args,
                         capture_output=True, text=True, timeout=90, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout  # rank 0 only
    assert json.loads(lines[0]) == ours == {"norm": "sync", "world_size": 2, "global_batch": 6,
                                            "test_accuracy": ours["test_accuracy"],
                                            "final_loss": ours["final_loss"]}


def test_lesson_experiments_count_collectives_and_time_the_layer(experiments):
    assert experiments[0]["collectives"] == {"per_replica": {"all_gather": 0, "all_reduce": 1},
                                             "sync": {"all_gather": 2, "all_reduce": 3}}
    assert set(experiments[0]["train"]) == {"per_replica/0", "sync/0"}
    assert all(len(run["loss"]) == 20 for run in experiments[0]["train"].values())
    assert all(t > 0 for t in experiments[0]["layer_time"].values())
