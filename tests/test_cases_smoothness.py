"""bncourse.cases.smoothness and bncourse.cases.bn_scale (lesson 07)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.cases import bn_scale as bs
from bncourse.cases import smoothness as sm
from bncourse.data import load_digits
from bncourse.models import mlp


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _batch(n=32, d=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


# --- NoisyBatchNorm1d ---------------------------------------------------------------------

def test_noisy_bn_noise_follows_santurkar_distribution():
    layer = sm.NoisyBatchNorm1d(200, generator=torch.Generator().manual_seed(0))
    s, m = layer.draw(5000)
    assert s.shape == m.shape == (5000, 200)
    mu, sigma = m.mean(0), s.mean(0)
    assert mu.min() > -0.5 - 0.01 and mu.max() < 0.5 + 0.01 and mu.std() > 0.2
    assert sigma.min() > 1 - 0.01 and sigma.max() < 1.25 + 0.01
    assert ((m.max(0).values - m.min(0).values) <= 0.2 + 1e-6).all()  # U(mu - 0.1, mu + 0.1)
    torch.testing.assert_close(s.std(0).mean(), torch.tensor(0.1), atol=0.005, rtol=0)


def test_noisy_bn_matches_bn_in_eval_and_is_affine_in_train():
    torch.manual_seed(0)
    x = torch.randn(16, 6) * 3 + 1
    layer = sm.NoisyBatchNorm1d(6, generator=torch.Generator().manual_seed(1))
    plain = bnn.BatchNorm1d(6)
    out = layer(x)
    bn_out = plain(x)
    g = torch.Generator().manual_seed(1)
    s, m = sm.NoisyBatchNorm1d(6, generator=g).draw(16)
    torch.testing.assert_close(out, s * bn_out + m)
    layer.eval(), plain.eval()
    torch.testing.assert_close(layer(x), plain(x))


def test_noisy_bn_draws_per_call_and_held_noise_reuses():
    layer = sm.NoisyBatchNorm1d(4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(8, 4)
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)
    with sm.held_noise(layer):
        c, d = layer(x), layer(x)
    torch.testing.assert_close(c, d)
    assert layer.hold is False


def test_noisy_bn_is_seeded_by_torch_global_generator():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(sm.NoisyBatchNorm1d(5)(torch.ones(4, 5) + torch.arange(4.0)[:, None]))
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(generator=3), TypeError, "generator must be a torch.Generator"),
    (dict(n_sigma=0.5), ValueError, "n_sigma >= 1"),
    (dict(r_mu=-1), ValueError, "r_sigma >= 0"),
])
def test_noisy_bn_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        sm.NoisyBatchNorm1d(3, **kwargs)


def test_noisy_bn_in_mlp():
    model = mlp([12, 8, 3], activation=nn.ReLU, norm=sm.NoisyBatchNorm1d)
    assert isinstance(model[1], sm.NoisyBatchNorm1d)
    assert model(torch.randn(5, 12)).shape == (5, 3)


# --- ics and landscape ----------------------------------------------------------------------

def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("norm", [None, bnn.BatchNorm1d, sm.NoisyBatchNorm1d])
def test_ics_shape_and_leaves_model_unchanged(norm):
    torch.manual_seed(0)
    model = mlp([12, 10, 10, 3], activation=nn.ReLU, norm=norm).eval()
    x, y = _batch()
    before = _state(model)
    out = sm.ics(model, x, y, lr=0.1)
    assert len(out["norm"]) == len(out["cosine"]) == 3
    after = _state(model)
    for k in before:
        torch.testing.assert_close(before[k], after[k])
    assert model.training is False
    if norm is not sm.NoisyBatchNorm1d:
        assert out["norm"][0] == 0 and out["cosine"][0] == pytest.approx(1)  # nothing before layer 1
    assert all(-1 - 1e-6 <= c <= 1 + 1e-6 for c in out["cosine"])


def test_ics_matches_a_hand_computation_for_two_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))
    x, y = _batch(8, 4, 2)
    w1, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()

    def grads(a, b):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = nn.functional.cross_entropy(torch.tanh(x @ a.T) @ b.T, y)
        return torch.autograd.grad(loss, (a, b))

    g1, g2 = grads(w1, w2)
    _, g2_new = grads(w1 - 0.5 * g1, w2)
    out = sm.ics(model, x, y, lr=0.5)
    assert out["norm"][1] == pytest.approx((g2 - g2_new).norm().item(), rel=1e-5)


def test_landscape_matches_a_hand_line_search():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    x, y = _batch(8, 4, 2)
    res = sm.landscape(model, x, y, lr=0.2, factors=(1.0, 2.0))
    params = [p.detach().clone() for p in model.parameters()]

    def lg(ps):
        ps = [p.clone().requires_grad_() for p in ps]
        loss = nn.functional.cross_entropy(x @ ps[0].T + ps[1], y)
        return loss.item(), torch.cat([g.flatten() for g in torch.autograd.grad(loss, ps)])

    _, g = lg(params)
    gs = [g[:8].view(2, 4), g[8:]]
    losses, diffs, betas = [], [], []
    for eta in (0.2, 0.4):
        loss, g_new = lg([p - eta * q for p, q in zip(params, gs)])
        losses.append(loss)
        diffs.append((g - g_new).norm().item())
        betas.append(diffs[-1] / (eta * g.norm().item()))
    assert res["loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-5)
    assert res["grad_change"] == pytest.approx(max(diffs), rel=1e-5)
    assert res["beta"] == pytest.approx(max(betas), rel=1e-5)
    for p, q in zip(model.parameters(), params):
        torch.testing.assert_close(p.detach(), q)


def test_eta_factors_are_santurkar_grid():
    assert sm.ETA_FACTORS == pytest.approx(tuple(np.linspace(0.5, 4, 8)))


@pytest.mark.parametrize("fn", [sm.ics, sm.landscape])
def test_probe_errors(fn):
    x, y = _batch()
    with pytest.raises(ValueError, match="lr must be positive"):
        fn(mlp([12, 3]), x, y, lr=0)


def test_ics_needs_linear_layers():
    with pytest.raises(ValueError, match="nn.Linear"):
        sm.ics(nn.Sequential(nn.Identity()), *_batch(), lr=0.1)


def test_run_probed_records_every_k_steps(digits):
    torch.manual_seed(0)
    rec = sm.run_probed(mlp([64, 16, 16, 10], activation=nn.ReLU, norm=bnn.BatchNorm1d), digits,
                        steps=20, lr=0.1, probe_every=10, eval_every=10)
    assert rec.steps == [10, 20] and len(rec.ics_norm) == 2 and len(rec.ics_norm[0]) == 3
    assert len(rec.beta) == 2 and rec.history.steps == [10, 20]
    with pytest.raises(ValueError, match="probe_every must be at least 1"):
        sm.run_probed(mlp([64, 10]), digits, steps=2, lr=0.1, probe_every=0)


# --- bn_scale -----------------------------------------------------------------------------

def test_scale_invariance():
    res = bs.scale_invariance(scales=(0.1, 10.0))
    assert max(res["output_change"]) < 1e-8
    assert res["grad_ratio"] == pytest.approx([10.0, 0.1], rel=1e-6)
    with pytest.raises(ValueError, match="scales must be positive"):
        bs.scale_invariance(scales=(0.0,))


def test_effective_lr():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    torch.testing.assert_close(bs.effective_lr(w, 0.5), torch.tensor([0.5 / 25, 0.5]))
    with pytest.raises(ValueError, match="weight must be a"):
        bs.effective_lr(torch.ones(3), 0.1)


def test_equilibrium_norm_is_the_fixed_point():
    lr, wd, G = 0.3, 0.1, 2.0
    n = bs.equilibrium_norm(lr, wd, G)
    assert ((1 - lr * wd) ** 2 * n**2 + lr**2 * G**2 / n**2) == pytest.approx(n**2, rel=1e-12)
    assert bs.equilibrium_norm(0.01, 1e-4, G) == pytest.approx((0.01 * G**2 / 2e-4) ** 0.25,
                                                              rel=1e-3)
    with pytest.raises(ValueError, match="weight_decay must be positive"):
        bs.equilibrium_norm(0.1, 0.0, 1.0)


def test_run_weight_norms_without_decay_never_shrinks(digits):
    torch.manual_seed(0)
    rec = bs.run_weight_norms(mlp([64, 16, 16, 10], activation=nn.ReLU, norm=bnn.BatchNorm1d),
                              digits, steps=30, lr=0.5, layer=1)
    assert len(rec.norm) == len(rec.eff_lr) == len(rec.unit_grad_sq) == 30
    assert (np.diff(rec.norm) > -1e-6).all()
    with pytest.raises(ValueError, match="layer must index"):
        bs.run_weight_norms(mlp([64, 10]), digits, steps=1, lr=0.1, layer=3)


def test_lr_sweep_shape(digits):
    acc = bs.lr_sweep(lambda: mlp([64, 8, 10]), digits, [0.1, 1.0], seeds=(0, 1), steps=5)
    assert len(acc) == 2 and len(acc[0]) == 2 and all(0 <= a <= 1 for r in acc for a in r)


def test_residual_mlp_and_grad_norms():
    torch.manual_seed(0)
    model = bs.residual_mlp(12, 8, 3, 4)
    assert model(torch.randn(5, 12)).shape == (5, 4)
    assert isinstance(model[1].bn, bnn.BatchNorm1d) and model[1].linear.bias is None
    x, y = _batch(16, 12, 4)
    g = bs.grad_norms_at_init(model, x, y)
    assert len(g) == 5 and all(v > 0 and math.isfinite(v) for v in g)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        bs.residual_mlp(12, 8, 0, 4)
    with pytest.raises(ValueError, match="nn.Linear"):
        bs.grad_norms_at_init(nn.Sequential(nn.ReLU()), x, y)


def test_deep_plain_bn_gradient_grows_with_depth():
    x, y = _batch(64, 16, 4)
    ratios = []
    for depth in (3, 20):
        torch.manual_seed(0)
        g = bs.grad_norms_at_init(mlp([16] + [32] * depth + [4], activation=nn.ReLU,
                                      norm=bnn.BatchNorm1d), x, y)
        ratios.append(g[0] / g[-2])
    assert ratios[1] > 5 * ratios[0]
