"""Functional forms and modules that torch lacks, for the catalog's entries (NumPy-checked
in tests/catalog/test_catalog_oracle.py). Each docstring gives the formula and the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SwishBeta(nn.Module):
    """Swish with a learnable beta: ``x * sigmoid(beta * x)`` (Ramachandran et al. 2017)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta.to(x.dtype) * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta.item():.4g}"


def exponential(x: Tensor) -> Tensor:
    """``exp(x)`` (Keras ``exponential``)."""
    return torch.exp(x)


def linear(x: Tensor) -> Tensor:
    """``x`` (Keras ``linear``, ``nn.Identity``)."""
    return x


def sparse_plus(x: Tensor) -> Tensor:
    """0 for x <= -1, (x + 1)^2 / 4 for -1 < x < 1, x for x >= 1 (Keras ``sparse_plus``)."""
    return torch.where(x <= -1, torch.zeros_like(x), torch.where(x >= 1, x, (x + 1) ** 2 / 4))


def sparse_sigmoid(x: Tensor) -> Tensor:
    """0 for x <= -1, (x + 1) / 2 for -1 < x < 1, 1 for x >= 1 (Keras ``sparse_sigmoid``)."""
    return torch.clamp((x + 1) / 2, 0.0, 1.0)


def squareplus(x: Tensor, b: float = 4.0) -> Tensor:
    """``(x + sqrt(x^2 + b)) / 2`` (Barron 2021, arXiv:2112.11687)."""
    return (x + torch.sqrt(x * x + b)) / 2


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection onto the simplex along ``dim``: ``max(x - tau, 0)`` with tau such
    that the outputs sum to 1 (Martins & Astudillo 2016, arXiv:1602.02068)."""
    z = x.movedim(dim, -1)
    sorted_z, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    cumsum = sorted_z.cumsum(-1)
    support = (1 + k * sorted_z) > cumsum
    k_z = support.sum(-1, keepdim=True)
    tau = (cumsum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0.0).movedim(-1, dim)


def swish_beta(x: Tensor, beta: float = 1.0) -> Tensor:
    """``x * sigmoid(beta * x)`` at a fixed beta."""
    return x * torch.sigmoid(beta * x)


def prelu(x: Tensor, num_parameters: int = 1, init: float = 0.25) -> Tensor:
    """PReLU at initialisation: ``x if x >= 0 else init * x`` (He et al. 2015). Every
    channel has the same slope then, so one weight is exact."""
    return F.prelu(x, torch.full((1,), float(init), dtype=x.dtype, device=x.device))


def rrelu(x: Tensor, lower: float = 1 / 8, upper: float = 1 / 3) -> Tensor:
    """RReLU's deterministic (evaluation-mode) form: slope (lower + upper) / 2 for x < 0
    (Xu et al. 2015)."""
    return F.rrelu(x, lower, upper, training=False)
