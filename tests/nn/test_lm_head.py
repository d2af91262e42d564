"""The fused LM head + token cross-entropy (actlab.nn.lm_head) against autograd through
``torch.baddbmm`` and ``F.cross_entropy``: losses and the gradients of x, weight and bias."""

import pytest
import torch
import torch.nn.functional as F

from actlab.nn.lm_head import head_cross_entropy


def reference(x, weight, bias, targets):
    logits = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return flat.view(x.shape[0], -1).mean(dim=1)


def leaves(generator, K=3, N=10, C=5, V=7, scale=1.0):
    x = torch.randn(K, N, C, generator=generator, dtype=torch.float64)
    weight = scale * torch.randn(K, V, C, generator=generator, dtype=torch.float64)
    bias = torch.randn(K, V, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, V, (K, N), generator=generator)
    return [t.requires_grad_() for t in (x, weight, bias)], targets


@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: logits far apart, a target's p ~ 0
def test_losses_and_gradients_match_autograd_cross_entropy(scale):
    """float64, so the two summation orders agree to 1e-10; an upstream gradient that
    differs per member (the trainer zeroes a diverged member's)."""
    generator = torch.Generator().manual_seed(0)
    (x, weight, bias), targets = leaves(generator, scale=scale)
    upstream = torch.tensor([1.0, 0.0, 2.5], dtype=torch.float64)
    got = head_cross_entropy(x, weight, bias, targets)
    grads = torch.autograd.grad((got * upstream).sum(), (x, weight, bias))
    want = reference(x, weight, bias, targets)
    expected = torch.autograd.grad((want * upstream).sum(), (x, weight, bias))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert want.max() > 20 if scale > 1 else True  # the large-logit case is really one
    for name, g, e in zip(("x", "weight", "bias"), grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)


def test_float32_is_close_to_the_float64_loss():
    generator = torch.Generator().manual_seed(1)
    (x, weight, bias), targets = leaves(generator, K=2, N=64, C=16, V=256)
    exact = reference(x, weight, bias, targets)
    got = head_cross_entropy(*(t.detach().float() for t in (x, weight, bias)), targets)
    torch.testing.assert_close(got.double(), exact.detach(), rtol=1e-6, atol=1e-6)
