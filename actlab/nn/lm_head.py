"""The language model's output layer and its loss in one autograd step, for K members.

Per member k, with x (N, C) the final hidden states, W (V, C), b (V) and targets t (N):

    z = x W^T + b                                 logits (N, V)
    loss_k = mean_n [ logsumexp(z_n) - z_n[t_n] ] mean token cross-entropy (nats/token)

and its gradient (the softmax's, e.g. Goodfellow et al. 2016, section 6.2.2.3):

    dL/dz = g_k / N * (softmax(z) - onehot(t))    g_k: the upstream gradient of loss_k
    dx = dz W,  dW = dz^T x,  db = sum_n dz

``F.cross_entropy`` over the logits of all K members does the same in more passes over the
(K, N, V) tensor, the largest of the step: it writes the log-probabilities as a second
tensor, and its backward fills a zero tensor, scatters the targets into it and reads both
again (log_softmax_backward). Here the forward turns the logits into softmax - onehot in
place, and the backward scales that by g_k / N and runs the two batched matmuls: one
(K, N, V) tensor, written once and read three times. Equal to the autograd path up to
float rounding (tests/test_lm_head.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
        logits = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (K, N, 1)
        index = targets.unsqueeze(-1)
        losses = (lse - logits.gather(-1, index)).squeeze(-1).mean(dim=1)
        probs = logits.sub_(lse).exp_()  # softmax, in place of the logits
        probs.scatter_add_(-1, index, torch.full_like(index, -1.0, dtype=probs.dtype))
        ctx.save_for_backward(x, weight, probs)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight, dz = ctx.saved_tensors
        dz = dz.mul_((grad / x.shape[1]).view(-1, 1, 1))  # the saved tensor is used once
        dx = torch.bmm(dz, weight) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dz.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        db = dz.sum(dim=1) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def head_cross_entropy(x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """(K,) mean token cross-entropy of logits ``x[k] @ weight[k].T + bias[k]`` against
    `targets` (module docstring). x (K, N, C), weight (K, V, C), bias (K, V), targets
    (K, N) int64. Differentiable in x, weight and bias (once: no double backward)."""
    return _HeadCrossEntropy.apply(x, weight, bias, targets)
