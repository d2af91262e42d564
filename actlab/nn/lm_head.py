"""The language model's output layer and its loss in one autograd step, for K members.

Per member k, with x (N, C) the final hidden states, W (V, C), b (V) and targets t (N):

    z = x W^T + b                                 logits (N, V)
    loss_k = mean_n [ logsumexp(z_n) - z_n[t_n] ] mean token cross-entropy (nats/token)

and its gradient (the softmax's, e.g. Goodfellow et al. 2016, section 6.2.2.3):

    dL/dz = g_k / N * (softmax(z) - onehot(t))    g_k: the upstream gradient of loss_k
    dx = dz W,  dW = dz^T x,  db = sum_n dz

``F.cross_entropy`` over the logits of all K members does the same in more passes over the
(K, N, V) tensor, the largest of the step: its backward fills a zero tensor, scatters the targets
into it and reads it again with the log-probabilities (log_softmax_backward). Here the
forward turns the log-probabilities into softmax - onehot in place (exp, then -1 at each
target), and the backward scales that by g_k / N and runs the two batched matmuls. Equal
to the autograd path up to float rounding (tests/nn/test_lm_head.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
        # The bias as one more input column: [x, 1] [W, b]^T, one matmul that writes the
        # logits once (baddbmm first copies the bias into all of them), and whose weight
        # gradient [dW, db] is one matmul too (no separate sum over the logits).
        ones = x.new_ones(x.shape[:-1] + (1,))
        x1 = torch.cat((x, ones), dim=-1)
        w1 = torch.cat((weight, bias.unsqueeze(-1)), dim=-1)
        log_probs = torch.log_softmax(torch.bmm(x1, w1.transpose(1, 2)), dim=-1)
        index = targets.unsqueeze(-1)
        losses = log_probs.gather(-1, index).squeeze(-1).mean(dim=1).neg()
        probs = log_probs.exp_()  # the softmax, in place
        probs.scatter_add_(-1, index, torch.full_like(index, -1.0, dtype=probs.dtype))
        ctx.save_for_backward(x1, weight, probs)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x1, weight, dz = ctx.saved_tensors
        dz = dz.mul_((grad / x1.shape[1]).view(-1, 1, 1))  # the saved tensor is used once
        dx = torch.bmm(dz, weight) if ctx.needs_input_grad[0] else None
        dw, db = None, None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw1 = torch.bmm(dz.transpose(1, 2), x1)  # (K, V, C + 1): [dW, db]
            dw, db = dw1[..., :-1], dw1[..., -1]
        return dx, dw, db, None


def head_cross_entropy(x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """(K,) mean token cross-entropy of logits ``x[k] @ weight[k].T + bias[k]`` against
    `targets` (module docstring). x (K, N, C), weight (K, V, C), bias (K, V), targets
    (K, N) int64. Differentiable in x, weight and bias (once: no double backward)."""
    return _HeadCrossEntropy.apply(x, weight, bias, targets)
