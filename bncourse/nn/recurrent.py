"""LSTM cells with and without normalisation, and a loop over time (case study 08).

All three cells take `(input, hx=None, time_step=0)` with `input` `(N, input_size)` and
`hx = (h, c)`, each `(N, hidden_size)` (zeros when None), and return the new `(h, c)`. The gate
order is torch's: i, f, g, o (rows of `weight_ih`/`weight_hh` in that order).

- `LSTMCell`: the plain cell, equal to `torch.nn.LSTMCell` (same parameter names, so
  `cell.load_state_dict(torch_cell.state_dict())` works)::

      (i, f, g, o) = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
      c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g),      h_t = sigma(o) * tanh(c_t)

- `BNLSTMCell`, Cooijmans et al. (2017, ICLR; arXiv 2016): separate BN on the two terms, shifts
  fixed at 0 and one shared bias b, gamma initialised to 0.1, and BN on the cell state for the
  output only (the carried c_t stays unnormalised); statistics per time step
  (`bncourse.nn.StepwiseBatchNorm`)::

      gates = BN_t(W_hh h_{t-1}; gamma_hh) + BN_t(W_ih x_t; gamma_ih) + b
      h_t = sigma(o) * tanh(BN_t(c_t; gamma_c, beta_c))

- `LNLSTMCell`, Ba, Kiros & Hinton (2016): layer normalisation over all 4H gate units of each
  term, and over the H units of c_t for the output. Per example: no batch, no running
  statistics, no maximum length::

      gates = LN(W_ih x_t) + LN(W_hh h_{t-1}) + b,     h_t = sigma(o) * tanh(LN(c_t))

`run_cell(cell, x)` runs any of them over a `(T, N, D)` sequence.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module, Parameter, init

from bncourse.nn.stepwise import StepwiseBatchNorm

__all__ = ["LSTMCell", "BNLSTMCell", "LNLSTMCell", "run_cell"]


class _LSTMCellBase(Module):
    """The weights every cell shares, input checks, and the cell update."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = Parameter(torch.empty(4 * hidden_size, hidden_size))

    def _init_weights(self) -> None:
        # torch's LSTMCell initialisation: U(-1/sqrt(H), 1/sqrt(H)) for every weight.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in (self.weight_ih, self.weight_hh):
            init.uniform_(weight, -bound, bound)

    def _check(self, input: Tensor, hx) -> tuple[Tensor, Tensor]:
        if not isinstance(input, Tensor) or input.dim() != 2:
            raise ValueError(f"input must be a (N, input_size) tensor, got "
                             f"{tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__}")
        if input.shape[1] != self.input_size:
            raise ValueError(f"input has {input.shape[1]} features, expected "
                             f"input_size={self.input_size}")
        N, H = input.shape[0], self.hidden_size
        if hx is None:
            zeros = input.new_zeros(N, H)
            return zeros, zeros
        h, c = hx
        for name, t in (("h", h), ("c", c)):
            if t.shape != (N, H):
                raise ValueError(f"hx: {name} must have shape (N, hidden_size) = {(N, H)}, "
                                 f"got {tuple(t.shape)}")
        return h, c

    def input_terms(self, x: Tensor) -> Tensor:
        """The input term of the gates for a whole sequence `(T, N, D)` -> `(T, N, 4H)`.

        It does not depend on h, so `run_cell` computes it for all steps in one call.
        """
        return torch.stack([self._input_term(x[t], t) for t in range(x.shape[0])])

    def _input_term(self, x: Tensor, t: int) -> Tensor:
        raise NotImplementedError

    def _recurrent_term(self, h: Tensor, t: int) -> Tensor:
        raise NotImplementedError

    def _cell_output(self, c: Tensor, t: int) -> Tensor:
        return c

    def forward(self, input: Tensor, hx=None, time_step: int = 0) -> tuple[Tensor, Tensor]:
        """One step: `input` `(N, input_size)`, `hx = (h, c)` or None -> `(h_t, c_t)`."""
        hx = self._check(input, hx)
        return self.step(self._input_term(input, time_step), hx, time_step)

    def step(self, input_term: Tensor, hx: tuple[Tensor, Tensor], t: int) -> tuple[Tensor, Tensor]:
        """The update from a precomputed input term `(N, 4H)` and `hx = (h, c)`."""
        h, c = hx
        gates = input_term + self._recurrent_term(h, t)
        i, f, g, o = gates.chunk(4, dim=1)  # torch's order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self._cell_output(c, t))
        return h, c

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class LSTMCell(_LSTMCellBase):
    """The plain LSTM cell, equal to `torch.nn.LSTMCell(input_size, hidden_size)`.

    Parameters `weight_ih` (4H, D), `weight_hh` (4H, H), `bias_ih` (4H,), `bias_hh` (4H,).
    `time_step` is accepted and ignored, so every cell runs in the same loop.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.bias_ih = Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._init_weights()
        bound = 1.0 / math.sqrt(self.hidden_size)
        init.uniform_(self.bias_ih, -bound, bound)
        init.uniform_(self.bias_hh, -bound, bound)

    def input_terms(self, x):
        return F.linear(x, self.weight_ih, self.bias_ih)

    def _input_term(self, x, t):
        return F.linear(x, self.weight_ih, self.bias_ih)

    def _recurrent_term(self, h, t):
        return F.linear(h, self.weight_hh, self.bias_hh)


class BNLSTMCell(_LSTMCellBase):
    """Batch-normalized LSTM cell of Cooijmans et al. (2017), statistics per time step.

    Args:
        input_size, hidden_size: D and H.
        max_length: time steps with their own statistics (T_max); beyond it the last step's are
            reused (or, with `reuse_last=False`, a ValueError is raised).
        gamma_init: initial gamma of all three BNs (the paper: 0.1; 1.0 saturates tanh).
        momentum, eps: of the running statistics, torch's conventions.

    Submodules `bn_ih`, `bn_hh` (4H features, no shift) and `bn_c` (H features, with a shift),
    each a `StepwiseBatchNorm` with buffers `running_mean`/`running_var` of shape
    `(max_length, features)`; parameters `weight_ih`, `weight_hh`, `bias` `(4H,)`, starting at 0.
    """

    def __init__(self, input_size: int, hidden_size: int, max_length: int,
                 gamma_init: float = 0.1, momentum: float = 0.1, eps: float = 1e-5,
                 reuse_last: bool = True) -> None:
        super().__init__(input_size, hidden_size)
        self.max_length = max_length
        self.gamma_init = gamma_init
        H = hidden_size
        kwargs = dict(max_length=max_length, eps=eps, momentum=momentum, weight_init=gamma_init,
                      reuse_last=reuse_last)
        # beta_hh = beta_ih = 0 "to avoid unnecessary redundancy": the one bias b shifts the sum.
        self.bn_ih = StepwiseBatchNorm(4 * H, bias=False, **kwargs)
        self.bn_hh = StepwiseBatchNorm(4 * H, bias=False, **kwargs)
        self.bn_c = StepwiseBatchNorm(H, bias=True, **kwargs)
        self.bias = Parameter(torch.zeros(4 * H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._init_weights()
        init.zeros_(self.bias)
        for bn in (self.bn_ih, self.bn_hh, self.bn_c):
            bn.reset_parameters()

    def _check(self, input, hx):
        if self.training and isinstance(input, Tensor) and input.dim() == 2 and input.shape[0] < 2:
            raise ValueError(f"input has batch size {input.shape[0]}: BNLSTMCell needs at least "
                             f"2 sequences in training mode (batch statistics); call .eval() "
                             f"to use the running statistics")
        return super()._check(input, hx)

    def input_terms(self, x):
        if self.training and x.shape[1] < 2:
            self._check(x[0], None)  # the batch-of-one error
        return self.bn_ih.forward_sequence(F.linear(x, self.weight_ih)) + self.bias

    def _input_term(self, x, t):
        return self.bn_ih(F.linear(x, self.weight_ih), t) + self.bias

    def _recurrent_term(self, h, t):
        return self.bn_hh(F.linear(h, self.weight_hh), t)

    def _cell_output(self, c, t):
        return self.bn_c(c, t)  # only the output path: the carried c_t is not normalised

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, max_length={self.max_length}, "
                f"gamma_init={self.gamma_init}")


class LNLSTMCell(_LSTMCellBase):
    """Layer-normalized LSTM cell of Ba, Kiros & Hinton (2016).

    Parameters `weight_ih`, `weight_hh`, `bias` (4H,), and the gains and shifts
    `ln_ih_weight`, `ln_ih_bias`, `ln_hh_weight`, `ln_hh_bias` (4H,), `ln_c_weight`,
    `ln_c_bias` (H,): gains start at 1, shifts at 0. Same computation in train and eval mode.
    """

    def __init__(self, input_size: int, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__(input_size, hidden_size)
        self.eps = eps
        H = hidden_size
        self.bias = Parameter(torch.zeros(4 * H))
        for name, size in (("ln_ih", 4 * H), ("ln_hh", 4 * H), ("ln_c", H)):
            setattr(self, name + "_weight", Parameter(torch.ones(size)))
            setattr(self, name + "_bias", Parameter(torch.zeros(size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._init_weights()
        init.zeros_(self.bias)
        for name in ("ln_ih", "ln_hh", "ln_c"):
            init.ones_(getattr(self, name + "_weight"))
            init.zeros_(getattr(self, name + "_bias"))

    def _ln(self, x, name):
        weight, bias = getattr(self, name + "_weight"), getattr(self, name + "_bias")
        return F.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)

    def input_terms(self, x):
        return self._ln(F.linear(x, self.weight_ih), "ln_ih") + self.bias

    def _input_term(self, x, t):
        return self._ln(F.linear(x, self.weight_ih), "ln_ih") + self.bias

    def _recurrent_term(self, h, t):
        return self._ln(F.linear(h, self.weight_hh), "ln_hh")

    def _cell_output(self, c, t):
        return self._ln(c, "ln_c")


def run_cell(cell: Module, x: Tensor, hx=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run `cell` over a sequence: `x` `(T, N, D)` -> outputs `(T, N, H)` and the last `(h, c)`.

    Step t is called with `time_step=t` (0-based), so a BN cell uses the statistics of step t.
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (T, N, D) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.shape[0] == 0:
        raise ValueError("x has no time steps (T = 0)")
    hx = cell._check(x[0], hx)
    input_terms = cell.input_terms(x)  # (T, N, 4H): one call, as it does not depend on h
    outputs = []
    for t in range(x.shape[0]):
        hx = cell.step(input_terms[t], hx, t)
        outputs.append(hx[0])
    return torch.stack(outputs), hx
