"""bncourse.cases.variants (lesson 10): layers by name, the MLP, runs, sweep, train/eval
disagreement and Ghost BN runs, on a tiny dataset so the tests stay fast."""
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.cases import variants as V
from bncourse.data import Dataset


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 3
    y = torch.randint(0, 3, (96,), generator=g)
    x = centres[y] + torch.randn(96, 6, generator=g)
    return Dataset(x[:64], y[:64], x[64:], y[64:], num_classes=3, name="tiny")


LAYERS = [("none", type(None)), ("BN", bnn.BatchNorm1d), ("GN", bnn.GroupNorm),
          ("LN", bnn.GroupNorm), ("BRN", bnn.BatchRenorm1d)]


@pytest.mark.parametrize("name, cls", LAYERS)
def test_make_norm_builds_each_layer(name, cls):
    layer = V.make_norm(name, 16)
    assert isinstance(layer, cls)


def test_group_sizes_and_renorm_settings():
    assert V.make_norm("GN", 64).num_groups == 8
    assert V.make_norm("LN", 64).num_groups == 1
    assert V.make_norm("GN", 4).num_groups == 1  # fewer features than a group: one group
    brn = V.make_norm("BRN", 8)
    assert (brn.momentum, brn.warmup_steps) == (0.1, V.RENORM_SCHEDULE["warmup_steps"])
    gbn = V.make_norm("GBN", 8, virtual_batch_size=4)
    assert isinstance(gbn, bnn.GhostBatchNorm1d) and gbn.virtual_batch_size == 4


@pytest.mark.parametrize("call, message", [
    (lambda: V.make_norm("batchnorm", 8), "name must be one of"),
    (lambda: V.make_norm("GBN", 8), "needs virtual_batch_size"),
    (lambda: V.norm_mlp("BN", (6,)), "sizes must list"),
    (lambda: V.batch_size_sweep(None, norms=("XN",)), "norms must be keys"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", list(V.NORMS) + ["GBN"])
def test_norm_mlp_shapes_and_biases(name):
    model = V.norm_mlp(name, (6, 8, 8, 3), virtual_batch_size=2)
    assert model(torch.randn(4, 6)).shape == (4, 3)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    assert all((m.bias is None) == (name != "none") for m in linears[:-1])


@pytest.mark.parametrize("batch_size, lr", [(2, 0.003125), (32, 0.05), (64, 0.1), (512, 0.2)])
def test_scaled_lr_is_linear_then_capped(batch_size, lr):
    assert V.scaled_lr(batch_size) == pytest.approx(lr)


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 1}, "batch_size must be an int >= 2"),
                                             ({"batch_size": 4, "epochs": 0}, "epochs must be")])
def test_train_one_rejects_bad_sizes(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        V.train_one("BN", tiny, **kwargs)


def test_train_one_runs_equal_epochs_and_is_seeded(tiny):
    model, history = V.train_one("BN", tiny, batch_size=8, seed=3, epochs=2)
    assert history.steps == [2 * 64 // 8]
    assert int(model[1].num_batches_tracked) == 16
    _, again = V.train_one("BN", tiny, batch_size=8, seed=3, epochs=2)
    assert again.final_accuracy == history.final_accuracy


def test_sweep_table_and_kept_models(tiny):
    sweep = V.batch_size_sweep(tiny, norms=("none", "GN"), batch_sizes=(4, 16), seeds=(0, 1),
                               epochs=1, keep_models=[("GN", 4)])
    assert set(sweep.accuracy) == {"none", "GN"} and set(sweep.accuracy["GN"]) == {4, 16}
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v)
               for row in sweep.accuracy.values() for v in row.values())
    assert sorted(sweep.models) == [("GN", 4, 0), ("GN", 4, 1)]
    lo, hi = sweep.spread("GN", 4)
    assert lo <= sweep.mean("GN", 4) <= hi
    lines = sweep.table().splitlines()
    assert len(lines) == 4 and "B=4" in lines[0] and lines[3].strip().startswith("GN")


def test_mode_disagreement_is_zero_without_batch_statistics_and_changes_nothing(tiny):
    model = V.norm_mlp("GN", (6, 8, 8, 3))
    assert V.mode_disagreement(model, tiny.x_train, 2) == 0.0
    bn_model, _ = V.train_one("BN", tiny, batch_size=4, epochs=1)
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    gap = V.mode_disagreement(bn_model, tiny.x_train, 2)
    assert 0.0 < gap <= 1.0  # a batch of 2 normalises every feature to about +-1
    for key, value in bn_model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="x must be"):
        V.mode_disagreement(bn_model, [1.0, 2.0], 2)


def test_ghost_runs_structure(tiny):
    result = V.ghost_runs(tiny, batch_size=16, virtual_batch_sizes=(None, 4), seeds=(0,),
                          epochs=1)
    assert set(result.test) == set(result.train) == set(result.seconds) == {None, 4}
    assert 0 <= result.mean(4) <= 1 and 0 <= result.mean(None, "train") <= 1
    assert result.seconds[4][0] > 0


def test_renorm_clip_fraction_counts_clipped_channels_and_changes_nothing(tiny):
    model = V.norm_mlp("BRN", (6, 8, 8, 3))
    # r_max 1, d_max 0 (the warm-up): every channel is at its limit.
    assert V.renorm_clip_fraction(model, tiny.x_train, 4) == 1.0
    for layer in model:
        if isinstance(layer, bnn.BatchRenorm1d):
            layer.r_max, layer.d_max, layer.warmup_steps = 1e6, 1e6, 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert V.renorm_clip_fraction(model, tiny.x_train, 4) == 0.0  # nothing reaches 1e6
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no BatchRenorm1d"):
        V.renorm_clip_fraction(V.norm_mlp("BN", (6, 8, 3)), tiny.x_train, 4)
