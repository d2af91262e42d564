"""A small Vision Transformer, as a user model for `actlab compare --model`.

    actlab compare --model examples/vit.py:vit_tiny --dataset fashion-mnist \\
        --activations gelu,relu,silu --seeds 3 --epochs 2

A builder: actlab calls ``vit_tiny(act)`` once per member, after ``torch.manual_seed(seed)``,
with ``act`` returning a fresh module of that member's activation (the MLP of each block).
Dosovitskiy et al. 2021 (https://arxiv.org/abs/2010.11929): 7x7 patches of a 28x28 image
(16 tokens) and a class token, learned position embeddings, pre-norm blocks of
nn.MultiheadAttention and a two-layer MLP, the class token's final state to a linear head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)) with the member's activation."""

    def __init__(self, dim: int, heads: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), act(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        q = self.norm1(x)
        x = x + self.attn(q, q, q, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self,
        act: Callable[[], nn.Module],
        image: int = 28,
        patch: int = 7,
        channels: int = 1,
        dim: int = 48,
        depth: int = 2,
        heads: int = 4,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.patch = patch
        tokens = (image // patch) ** 2
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, act) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        cls = self.cls.expand(x.shape[0], -1, -1)
        h = self.blocks(torch.cat([cls, tokens], dim=1) + self.pos)
        return self.head(self.norm(h)[:, 0])


def vit_tiny(act: Callable[[], nn.Module]) -> nn.Module:
    """ViT for 1-channel 28x28 images (MNIST family): 2 blocks of width 48, 4 heads."""
    return ViT(act)
