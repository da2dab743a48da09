"""Lesson 07: what BN's scale invariance does to optimisation, and where BN hurts.

    scale_invariance     BN(W u) = BN(c W u); the gradient w.r.t. cW is grad/c
    effective_lr         lr / ||w_j||^2 per row of a weight followed by BN
    run_weight_norms     train with SGD (+ weight decay) recording a layer's row norms and
                         effective learning rate every step; the equilibrium prediction
    lr_sweep             final test accuracy over a log grid of learning rates, per seed
    residual_mlp         x -> Linear -> [x + ReLU(BN(Linear x))] * depth -> Linear
    grad_norms_at_init   the gradient norm of every weight layer at initialisation

Yang et al. (2019, "A mean field theory of batch normalization"): a deep BN MLP without skip
connections has gradients that explode with depth at initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bncourse.nn import BatchNorm1d

__all__ = ["scale_invariance", "effective_lr", "WeightNormRecord", "run_weight_norms",
           "equilibrium_norm", "lr_sweep", "ResidualBlock", "residual_mlp",
           "grad_norms_at_init"]


def scale_invariance(scales=(0.1, 1.0, 10.0), n: int = 32, d_in: int = 20, d_out: int = 8,
                     seed: int = 0) -> dict[str, list[float]]:
    """Linear (no bias) -> BatchNorm1d (train mode) -> a fixed random loss, with W scaled by c.

    Returns for each c in `scales`: "output_change", max |BN(cWu) - BN(Wu)|, and
    "grad_ratio", ||dL/d(cW)|| / ||dL/dW|| (1/c if the gradient scales inversely).
    Float64, so the invariance shows to ~1e-12 (not exactly: BN's eps breaks it slightly).
    """
    if any(c <= 0 for c in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    w0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    target = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    bn = BatchNorm1d(d_out, eps=1e-12).double().train()

    def run(c):
        w = (c * w0).requires_grad_()
        out = bn(u @ w.T)
        loss = ((out - target) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, w)
        return out.detach(), grad.norm().item()

    base_out, base_grad = run(1.0)
    result = {"scale": list(scales), "output_change": [], "grad_ratio": []}
    for c in scales:
        out, gn = run(c)
        result["output_change"].append((out - base_out).abs().max().item())
        result["grad_ratio"].append(gn / base_grad)
    return result


def effective_lr(weight: torch.Tensor, lr: float) -> torch.Tensor:
    """lr / ||w_j||^2 for each row j of `weight` `(out, in)` (each row feeds one BN unit).

    For a scale-invariant row, SGD moves its direction w/||w|| as SGD at lr / ||w||^2 would move
    a unit-norm row (van Laarhoven 2017; Hoffer et al. 2018). Returns `(out,)`.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a (out, in) matrix, got shape {tuple(weight.shape)}")
    return lr / weight.detach().pow(2).sum(dim=1)


def equilibrium_norm(lr: float, weight_decay: float, unit_grad_norm: float) -> float:
    """The row norm at which SGD with weight decay stops changing it, for a scale-invariant row.

    With g orthogonal to w and ||g|| = G / ||w|| (G: the gradient's norm at ||w|| = 1), one step
    gives ||w'||^2 = (1 - lr wd)^2 ||w||^2 + lr^2 G^2 / ||w||^2; the fixed point is
    ||w||^4 = lr^2 G^2 / (1 - (1 - lr wd)^2), about lr G^2 / (2 wd).
    """
    if lr <= 0 or weight_decay <= 0 or unit_grad_norm < 0:
        raise ValueError("lr and weight_decay must be positive and unit_grad_norm >= 0, got "
                         f"lr={lr}, weight_decay={weight_decay}, unit_grad_norm={unit_grad_norm}")
    return (lr**2 * unit_grad_norm**2 / (1 - (1 - lr * weight_decay) ** 2)) ** 0.25


@dataclass
class WeightNormRecord:
    """Per step: the mean row norm of the watched weight, the mean effective lr, and the mean
    of G^2 = ||g_j||^2 ||w_j||^2 (the squared gradient norm at unit weight norm)."""

    history: object
    norm: list[float] = field(default_factory=list)
    eff_lr: list[float] = field(default_factory=list)
    unit_grad_sq: list[float] = field(default_factory=list)


def run_weight_norms(model: nn.Module, data, *, steps: int, lr: float, weight_decay: float = 0.0,
                     layer: int = 1, batch_size: int = 60, seed: int = 0) -> WeightNormRecord:
    """Train with plain SGD (+ `weight_decay`) and record the `layer`-th Linear's row norms.

    `layer` counts nn.Linear modules from 0; pick one followed by BN (scale invariant).
    """
    from bncourse.train import train_classifier

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not 0 <= layer < len(linears):
        raise ValueError(f"layer must index one of the model's {len(linears)} Linear layers, "
                         f"got {layer}")
    weight = linears[layer].weight
    record = WeightNormRecord(history=None)

    def watch(state):
        w = weight.detach()
        norms = w.norm(dim=1)
        record.norm.append(norms.mean().item())
        record.eff_lr.append(effective_lr(w, lr).mean().item())
        # The gradient of this step was taken at the previous weights: use the last step's
        # norm product as the unit-norm gradient estimate (w changes little per step).
        if weight.grad is not None:
            record.unit_grad_sq.append((weight.grad.norm(dim=1) ** 2 * norms ** 2).mean().item())

    record.history = train_classifier(model, data, steps=steps, batch_size=batch_size, lr=lr,
                                      weight_decay=weight_decay, seed=seed, eval_every=steps,
                                      step_callback=watch)
    return record


def lr_sweep(make_model, data, lrs, *, seeds=(0, 1, 2), steps: int = 300,
             batch_size: int = 60) -> list[list[float]]:
    """Final test accuracy `[seed][lr]` of `make_model()` trained with SGD at each lr.

    torch is seeded with the seed before each model is built. A run whose loss became NaN
    scores its accuracy as is (chance or below).
    """
    from bncourse.train import train_classifier

    out = []
    for seed in seeds:
        row = []
        for lr in lrs:
            torch.manual_seed(seed)
            model = make_model()
            hist = train_classifier(model, data, steps=steps, batch_size=batch_size, lr=lr,
                                    seed=seed, eval_every=steps)
            row.append(hist.final_accuracy)
        out.append(row)
    return out


class ResidualBlock(nn.Module):
    """`(N, D) -> (N, D)`: h + ReLU(BN(W h)), the course's BatchNorm1d, W without bias."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        self.bn = BatchNorm1d(width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.relu(self.bn(self.linear(h)))


def residual_mlp(d_in: int, width: int, depth: int, num_classes: int) -> nn.Sequential:
    """Linear(d_in, width) -> `depth` ResidualBlocks -> Linear(width, num_classes)."""
    for name, v in (("d_in", d_in), ("width", width), ("depth", depth),
                    ("num_classes", num_classes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return nn.Sequential(nn.Linear(d_in, width), *[ResidualBlock(width) for _ in range(depth)],
                         nn.Linear(width, num_classes))


def grad_norms_at_init(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """||dL/dW|| of every nn.Linear weight (input to output), cross-entropy on `(x, y)`, train
    mode, at the model's current (initial) parameters."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    if not weights:
        raise ValueError("grad_norms_at_init needs a model with nn.Linear layers")
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, weights)
    return [g.norm().item() for g in grads]
