"""Lesson 07: internal covariate shift and the loss landscape, measured (Santurkar et al. 2018).

    NoisyBatchNorm1d    the course's BatchNorm1d followed by Santurkar's non-stationary noise
    ics                 Definition 2.1: ||G - G'|| and cos(G, G') per weight layer
    landscape           the line search along the gradient: loss range, gradient
                        predictiveness, effective beta-smoothness
    run_probed          train an MLP with plain SGD, probing ICS and the landscape every k steps

Everything runs in train mode on the batch given, and leaves the model's parameters and BN
buffers exactly as it found them.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from bncourse.nn import BatchNorm1d

__all__ = ["NoisyBatchNorm1d", "held_noise", "weight_layers", "ics", "landscape",
           "ProbeRecord", "run_probed", "ETA_FACTORS"]

# Santurkar et al. (2018, Appendix A.2.2): eta in [1/2, 4] x the training learning rate.
ETA_FACTORS = tuple(float(v) for v in torch.linspace(0.5, 4.0, 8))


class NoisyBatchNorm1d(nn.Module):
    """BatchNorm1d, then Santurkar et al.'s (2018, Algorithm 1) non-stationary noise.

    `(N, C) -> (N, C)`. In train mode, at every call (a training step) and for every unit j:
    mu_j ~ U(-n_mu, n_mu), sigma_j ~ U(1, n_sigma); then per sample i:
    m_ij ~ U(mu_j - r_mu, mu_j + r_mu), s_ij ~ N(sigma_j, r_sigma), and a_ij <- s_ij a_ij + m_ij,
    applied to the BN output (after gamma, beta). Eval mode is plain BN, no noise.
    Constants: n_mu = 0.5, n_sigma = 1.25, r_mu = r_sigma = 0.1. The noise comes from its own
    `generator` (default: one seeded from torch's global generator, so seeding torch makes it
    reproducible); `held_noise(model)` reuses the last draw instead of drawing anew.
    """

    def __init__(self, num_features: int, generator: torch.Generator | None = None,
                 n_mu: float = 0.5, n_sigma: float = 1.25, r_mu: float = 0.1,
                 r_sigma: float = 0.1) -> None:
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        if n_sigma < 1 or min(n_mu, r_mu, r_sigma) < 0:
            raise ValueError("noise constants must satisfy n_sigma >= 1 and n_mu, r_mu, "
                             f"r_sigma >= 0, got n_mu={n_mu}, n_sigma={n_sigma}, r_mu={r_mu}, "
                             f"r_sigma={r_sigma}")
        self.bn = BatchNorm1d(num_features)
        if generator is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma
        self.hold = False
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's noise for a batch of `n`: the scale s `(n, C)` and the shift m `(n, C)`."""
        c, g = self.bn.num_features, self.generator
        mu = (torch.rand(c, generator=g) * 2 - 1) * self.n_mu
        sigma = 1 + torch.rand(c, generator=g) * (self.n_sigma - 1)
        m = mu + (torch.rand(n, c, generator=g) * 2 - 1) * self.r_mu
        s = sigma + torch.randn(n, c, generator=g) * self.r_sigma
        return s, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn(x)
        if not self.training:
            return a
        if not (self.hold and self._last is not None and self._last[0].shape == a.shape):
            self._last = self.draw(a.shape[0])
        s, m = self._last
        return s.to(a.dtype) * a + m.to(a.dtype)


@contextlib.contextmanager
def held_noise(model: nn.Module):
    """Within the block every NoisyBatchNorm1d of `model` reuses its last noise draw."""
    layers = [m for m in model.modules() if isinstance(m, NoisyBatchNorm1d)]
    before = [m.hold for m in layers]
    for m in layers:
        m.hold = True
    try:
        yield
    finally:
        for m, h in zip(layers, before):
            m.hold = h


def weight_layers(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of the model's Linear layers, input to output."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


@contextlib.contextmanager
def _restored(model: nn.Module):
    state = copy.deepcopy(model.state_dict())
    was_training = model.training
    try:
        yield
    finally:
        model.load_state_dict(state)
        model.train(was_training)
        model.zero_grad(set_to_none=True)


def _grads(model, x, y, params) -> tuple[float, list[torch.Tensor]]:
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), [g.detach().clone() for g in grads]


def ics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, list[float]]:
    """Internal covariate shift of every weight layer (Santurkar et al. 2018, Definition 2.1).

    G_i is the gradient of the cross-entropy on `(x, y)` w.r.t. layer i's weight at the current
    parameters; G'_i the same gradient, same batch, after layers 1..i-1 took their SGD step
    `W <- W - lr G` (later layers unchanged). Returns {"norm": [||G_i - G'_i||], "cosine":
    [cos(G_i, G'_i)]} for i = 1..L. Noisy BN layers draw fresh noise for G' (it is the next
    step's view of the earlier layers). Train mode; the model is left unchanged.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive (the SGD step that defines G'), got {lr}")
    params = weight_layers(model)
    if not params:
        raise ValueError("ics needs a model with nn.Linear layers")
    out = {"norm": [], "cosine": []}
    with _restored(model):
        model.train()
        state = copy.deepcopy(model.state_dict())
        _, g = _grads(model, x, y, params)
        for i in range(len(params)):
            model.load_state_dict(state)
            with torch.no_grad():
                for p, gp in zip(params[:i], g[:i]):
                    p -= lr * gp
            _, g_new = _grads(model, x, y, params)
            a, b = g[i].flatten(), g_new[i].flatten()
            out["norm"].append((a - b).norm().item())
            out["cosine"].append(nn.functional.cosine_similarity(a, b, dim=0).item())
    return out


def landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
              factors=ETA_FACTORS) -> dict[str, float]:
    """Santurkar et al.'s (2018, section 3.2) line search along the gradient at the current w.

    With g = grad L(w) on `(x, y)` (all parameters) and eta = f * lr for f in `factors`:
    loss_range = max - min of L(w - eta g); grad_change = max ||grad L(w) - grad L(w - eta g)||
    (gradient predictiveness: small means the gradient stays predictive);
    beta = max ||grad L(w) - grad L(w - eta g)|| / ||eta g|| (the effective beta-smoothness).
    Same batch, train mode, noisy BN noise held; the model is left unchanged.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive (eta is a multiple of it), got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    losses, changes, betas = [], [], []
    with _restored(model), held_noise(model):
        model.train()
        state = copy.deepcopy(model.state_dict())
        _, g = _grads(model, x, y, params)
        gflat = torch.cat([t.flatten() for t in g])
        for f in factors:
            eta = f * lr
            model.load_state_dict(state)
            with torch.no_grad():
                for p, gp in zip(params, g):
                    p -= eta * gp
            loss, g_new = _grads(model, x, y, params)
            diff = (gflat - torch.cat([t.flatten() for t in g_new])).norm().item()
            losses.append(loss)
            changes.append(diff)
            betas.append(diff / (eta * gflat.norm().item()))
    return {"loss_range": max(losses) - min(losses), "grad_change": max(changes),
            "beta": max(betas)}


@dataclass
class ProbeRecord:
    """What `run_probed` measured: the History plus, at each probed step, the ICS per layer
    (`ics_norm`, `ics_cosine`, lists of per-layer lists) and the landscape measures."""

    history: object
    steps: list[int] = field(default_factory=list)
    ics_norm: list[list[float]] = field(default_factory=list)
    ics_cosine: list[list[float]] = field(default_factory=list)
    loss_range: list[float] = field(default_factory=list)
    grad_change: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)


def run_probed(model: nn.Module, data, *, steps: int, lr: float, probe_every: int = 100,
               batch_size: int = 60, seed: int = 0, probe_ics: bool = True,
               probe_landscape: bool = True, eval_every: int = 50) -> ProbeRecord:
    """Train `model` with plain SGD at `lr` (`bncourse.train.train_classifier`) and every
    `probe_every` steps measure `ics` and `landscape` on that step's batch."""
    from bncourse.train import train_classifier

    if probe_every < 1:
        raise ValueError(f"probe_every must be at least 1, got {probe_every}")
    record = ProbeRecord(history=None)

    def probe(state):
        if state.step % probe_every:
            return
        xb, yb = state.batch
        record.steps.append(state.step)
        if probe_ics:
            m = ics(state.model, xb, yb, lr)
            record.ics_norm.append(m["norm"])
            record.ics_cosine.append(m["cosine"])
        if probe_landscape:
            m = landscape(state.model, xb, yb, lr)
            record.loss_range.append(m["loss_range"])
            record.grad_change.append(m["grad_change"])
            record.beta.append(m["beta"])

    record.history = train_classifier(model, data, steps=steps, batch_size=batch_size, lr=lr,
                                      seed=seed, eval_every=eval_every, step_callback=probe)
    return record
