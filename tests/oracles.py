"""Closed-form test oracles shared by the attack, sweep, check and evaluation tests: linear classifiers
whose minimal L2 adversarial distance is known exactly, and a helper that builds per-example frames."""

from __future__ import annotations

import math

import torch
from torch import nn

from crossholder import evaluation

F64 = torch.float64


def linear_model(d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g, dtype=F64) * 5)
        lin.bias.zero_()
        lin.bias[1] = -0.5 * lin.weight.sum(1).diff()[0]    # the boundary passes through the centre of the box
    return lin.eval()


def distances(lin, x):
    w = lin.weight[1] - lin.weight[0]
    b = lin.bias[1] - lin.bias[0]
    return ((x @ w + b).abs() / w.norm()).detach()


def linear_multiclass(d=100, k=10, n=48, seed=0):
    """A 10-class linear classifier (float32, AutoAttack's dtype) on inputs inside [0.45, 0.55]^d, shaped
    ``(n, 1, 10, d / 10)``, where the box does not bind: the minimal L2 perturbation that changes the
    prediction is exactly ``min_{j != y} (f_y - f_j) / ||w_y - w_j||``."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g) * 20)
        lin.bias.copy_(-(lin.weight @ torch.full((d,), 0.5)))   # every boundary passes near the centre
        x = 0.45 + 0.1 * torch.rand(n, d, generator=g)
        z = lin(x)
        y = z.argmax(1)
        w = lin.weight
        gap = z.gather(1, y[:, None]) - z                                  # (n, k) f_y - f_j >= 0
        wn = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)                # (n, k) ||w_y - w_j||
        dist = torch.where(wn > 0, gap / wn.clamp_min(1e-12), torch.full_like(gap, math.inf)).min(1).values
    assert float(dist.max()) < 0.05, "the box must not bind for the closed form to hold"
    # Square attack needs image-shaped inputs (n, C, H, W)
    return nn.Sequential(nn.Flatten(), lin).eval(), x.view(n, 1, 10, d // 10), y, dist.double()


def strong_frame(**cols):
    base = {f"fooled_at_{c}": [3, 3, 3, 3] for c in ("ce", "cw", "apgd_ce", "apgd_t", "fab", "strongest")}
    base.update({f"fooled_at_{k}": v for k, v in cols.items()})
    return evaluation.pd.DataFrame({"index": range(4), **base})
