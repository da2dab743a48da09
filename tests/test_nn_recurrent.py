"""bncourse.nn LSTM cells and StepwiseBatchNorm (case study 08).

The plain cell against torch.nn.LSTMCell with copied weights; the BN cell against the equations
of Cooijmans et al. (2017) written out with torch's own batch norm; per-step buffers, eval
determinism, state_dict round trips, gradchecks in float64 and the errors for bad input.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import bncourse.nn as bnn
from bncourse.nn import BNLSTMCell, LNLSTMCell, LSTMCell, StepwiseBatchNorm, run_cell

D, H, T, N = 5, 4, 3, 6

CELLS = [
    ("lstm", lambda: LSTMCell(D, H)),
    ("bn", lambda: BNLSTMCell(D, H, max_length=T)),
    ("ln", lambda: LNLSTMCell(D, H)),
]


def _sequence(length=T, batch=N, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(length, batch, D, generator=g, dtype=dtype)


def test_exports():
    for name in ("LSTMCell", "BNLSTMCell", "LNLSTMCell", "StepwiseBatchNorm", "run_cell"):
        assert name in bnn.__all__


@pytest.mark.parametrize("hx", [False, True])
def test_lstm_cell_matches_torch(hx):
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(D, H)
    cell = LSTMCell(D, H)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(N, D)
    state = (torch.randn(N, H), torch.randn(N, H)) if hx else None
    for got, want in zip(cell(x, state), ref(x, state)):
        assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_run_cell_matches_torch_lstm():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(D, H)
    cell = LSTMCell(D, H)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})  # weight_ih_l0 ->
    x = _sequence(length=7)
    out, (h, c) = run_cell(cell, x)
    ref_out, (ref_h, ref_c) = ref(x)
    assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert_close(h, ref_h[0], rtol=1e-5, atol=1e-6)
    assert_close(c, ref_c[0], rtol=1e-5, atol=1e-6)


def _bn_reference(cell, x, running):
    """Cooijmans et al.'s equations with torch's F.batch_norm, one set of statistics a step."""
    h = c = torch.zeros(x.shape[1], H)
    outputs = []
    for t in range(x.shape[0]):
        s = min(t, cell.max_length - 1)
        def bn(v, name, bias):
            return F.batch_norm(v, running[name + "_mean"][s], running[name + "_var"][s],
                                getattr(cell, name).weight, bias, training=cell.training,
                                momentum=0.1, eps=1e-5)
        gates = (bn(h @ cell.weight_hh.T, "bn_hh", None) + bn(x[t] @ cell.weight_ih.T, "bn_ih", None)
                 + cell.bias)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(bn(c, "bn_c", cell.bn_c.bias))
        outputs.append(h)
    return torch.stack(outputs)


def _running_copy(cell):
    return {f"{name}_{k}": getattr(cell, name).__getattr__("running_" + k).clone()
            for name in ("bn_ih", "bn_hh", "bn_c") for k in ("mean", "var")}


@pytest.mark.parametrize("length", [2, T, T + 3])
def test_bn_cell_matches_equations_train_then_eval(length):
    torch.manual_seed(2)
    cell = BNLSTMCell(D, H, max_length=T)
    with torch.no_grad():  # non-trivial parameters
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    running = _running_copy(cell)
    x = _sequence(length)
    out, _ = run_cell(cell, x)
    assert_close(out, _bn_reference(cell, x, running), rtol=1e-5, atol=1e-6)
    # the buffers were updated exactly as torch's per-step batch norms were
    for key, value in running.items():
        name, k = key.rsplit("_", 1)
        assert_close(getattr(cell, name).__getattr__("running_" + k), value)
    cell.eval()
    x_eval = _sequence(length + 2, batch=3, seed=5)
    out = run_cell(cell, x_eval)[0]
    assert_close(out, _bn_reference(cell, x_eval, running), rtol=1e-5, atol=1e-6)


def test_step_by_step_equals_run_cell():
    torch.manual_seed(3)
    cell = BNLSTMCell(D, H, max_length=T)
    other = copy.deepcopy(cell)
    x = _sequence(T + 2)
    out, _ = run_cell(cell, x)
    hx, outs = None, []
    for t in range(x.shape[0]):
        hx = other(x[t], hx, time_step=t)
        outs.append(hx[0])
    assert_close(out, torch.stack(outs), rtol=1e-6, atol=1e-7)
    for (k, a), b in zip(cell.state_dict().items(), other.state_dict().values()):
        assert_close(a, b, msg=k)


def test_bn_cell_parameters_and_per_step_buffers():
    cell = BNLSTMCell(D, H, max_length=7)
    buffers = dict(cell.named_buffers())
    assert sorted(buffers) == sorted(f"{n}.running_{k}" for n in ("bn_ih", "bn_hh", "bn_c")
                                     for k in ("mean", "var"))
    assert buffers["bn_ih.running_mean"].shape == (7, 4 * H)
    assert buffers["bn_hh.running_var"].shape == (7, 4 * H)
    assert buffers["bn_c.running_mean"].shape == (7, H)
    assert cell.bn_ih.bias is None and cell.bn_hh.bias is None  # shifts fixed at 0
    assert cell.bn_c.bias is not None
    for bn in (cell.bn_ih, cell.bn_hh, cell.bn_c):
        assert_close(bn.weight.detach(), torch.full_like(bn.weight, 0.1))  # gamma = 0.1
    assert_close(cell.bias.detach(), torch.zeros(4 * H))
    assert "max_length=7" in repr(cell)


def test_only_trained_steps_change_their_statistics():
    cell = BNLSTMCell(D, H, max_length=5)
    run_cell(cell, _sequence(2))
    rm = cell.bn_hh.running_mean
    assert not torch.equal(cell.bn_ih.running_mean[:2], torch.zeros(2, 4 * H))
    assert torch.equal(rm[2:], torch.zeros(3, 4 * H))


@pytest.mark.parametrize("name, make", CELLS)
def test_shapes_and_eval_determinism(name, make):
    torch.manual_seed(4)
    cell = make()
    run_cell(cell, _sequence())  # some running statistics
    cell.eval()
    x = _sequence(T + 2, seed=7)
    state = dict((k, v.clone()) for k, v in cell.state_dict().items())
    out1, (h, c) = run_cell(cell, x)
    out2, _ = run_cell(cell, x)
    assert out1.shape == (T + 2, N, H) and h.shape == c.shape == (N, H)
    assert torch.equal(out1, out2)
    # in eval mode a sequence's output does not depend on the rest of the batch
    alone, _ = run_cell(cell, x[:, :1])
    assert_close(alone, out1[:, :1], rtol=1e-5, atol=1e-6)
    for k, v in cell.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed in eval mode"


@pytest.mark.parametrize("name, make", CELLS)
def test_state_dict_round_trip(name, make):
    torch.manual_seed(5)
    cell = make()
    run_cell(cell, _sequence())
    other = make()
    other.load_state_dict(cell.state_dict())
    cell.eval(), other.eval()
    x = _sequence(seed=9)
    assert torch.equal(run_cell(cell, x)[0], run_cell(other, x)[0])


def test_ln_cell_is_per_example_in_train_mode():
    torch.manual_seed(6)
    cell = LNLSTMCell(D, H)
    x = _sequence()
    assert_close(run_cell(cell, x[:, :1])[0], run_cell(cell, x)[0][:, :1], rtol=1e-5, atol=1e-6)
    assert not list(cell.buffers())


def test_ln_cell_matches_layer_norm_equations():
    torch.manual_seed(7)
    cell = LNLSTMCell(D, H)
    x = torch.randn(N, D)
    h0, c0 = torch.randn(N, H), torch.randn(N, H)
    ln = torch.nn.functional.layer_norm
    gates = ln(x @ cell.weight_ih.T, (4 * H,)) + ln(h0 @ cell.weight_hh.T, (4 * H,)) + cell.bias
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(ln(c, (H,)))
    got_h, got_c = cell(x, (h0, c0))
    assert_close(got_h, h), assert_close(got_c, c)


@pytest.mark.parametrize("name, make", CELLS)
def test_gradcheck_float64(name, make):
    torch.manual_seed(8)
    cell = make().double()
    x = _sequence(length=T + 1, batch=4, dtype=torch.float64).requires_grad_()
    params = [p for p in cell.parameters()]

    def f(x, *ps):
        return run_cell(cell, x)[0]
    # a fresh copy for every call would change nothing: running stats do not enter training
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_stepwise_bn_forward_sequence_matches_steps():
    torch.manual_seed(9)
    bn = StepwiseBatchNorm(3, max_length=4, weight_init=0.5)
    other = copy.deepcopy(bn)
    x = torch.randn(6, 5, 3)
    got = bn.forward_sequence(x)
    want = torch.stack([other(x[t], t) for t in range(6)])
    assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert_close(bn.running_mean, other.running_mean)
    assert_close(bn.running_var, other.running_var)


def test_stepwise_bn_unbiased_running_variance():
    bn = StepwiseBatchNorm(2, max_length=3, momentum=1.0)
    x = torch.randn(4, 2)
    bn(x, 1)
    assert_close(bn.running_var[1], x.var(0, unbiased=True))
    assert_close(bn.running_mean[1], x.mean(0))
    assert torch.equal(bn.running_var[0], torch.ones(2))


BAD_INPUT = [
    ("input size", lambda c: c(torch.randn(N, D + 1)), "input_size=5"),
    ("hx shape", lambda c: c(torch.randn(N, D), (torch.zeros(N, H + 1), torch.zeros(N, H))),
     "hx"),
    ("rank", lambda c: run_cell(c, torch.randn(N, D)), "x must be a \\(T, N, D\\)"),
]


@pytest.mark.parametrize("name, make", CELLS)
@pytest.mark.parametrize("what, call, match", BAD_INPUT)
def test_bad_input(name, make, what, call, match):
    with pytest.raises(ValueError, match=match):
        call(make())


def test_batch_of_one_in_training():
    cell = BNLSTMCell(D, H, max_length=T)
    with pytest.raises(ValueError, match="batch size 1"):
        cell(torch.randn(1, D))
    with pytest.raises(ValueError, match="batch size 1"):
        run_cell(cell, torch.randn(T, 1, D))
    cell.eval()
    assert cell(torch.randn(1, D))[0].shape == (1, H)


def test_longer_than_max_length_without_reuse():
    cell = BNLSTMCell(D, H, max_length=T, reuse_last=False)
    run_cell(cell, _sequence(T))
    with pytest.raises(ValueError, match="max_length=3"):
        run_cell(cell, _sequence(T + 1))
    cell.eval()
    with pytest.raises(ValueError, match="reuse_last"):
        cell(torch.randn(2, D), time_step=T)


@pytest.mark.parametrize("kwargs, match", [
    ({"input_size": 0}, "input_size"),
    ({"hidden_size": 2.5}, "hidden_size"),
    ({"max_length": 0}, "max_length"),
])
def test_bad_constructor_arguments(kwargs, match):
    args = {"input_size": D, "hidden_size": H, "max_length": T, **kwargs}
    with pytest.raises(ValueError, match=match):
        BNLSTMCell(**args)


def test_stepwise_bn_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        StepwiseBatchNorm(3, 4, momentum=0.0)
    bn = StepwiseBatchNorm(3, 4)
    with pytest.raises(ValueError, match="time_step"):
        bn(torch.randn(2, 3), -1)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        bn(torch.randn(2, 4), 0)
    with pytest.raises(ValueError, match=r"\(T, N, 3\)"):
        bn.forward_sequence(torch.randn(2, 3))
