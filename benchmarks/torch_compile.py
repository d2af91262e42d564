"""torch.compile of the step's elementwise work, against actlab's compiled C kernels.

The issue allowed either tool for fusing the step's small kernels, if it wins in wall
time on a cold and on a warm cache. This compiles (`torch.compile`, inductor, static
shapes) the same three pieces of the protocol's step that actlab/engine/native_step.c fuses,
at the protocol's shapes (4 members, 128 units, batch 64, 10 classes):

- the activations of a layer (relu, sigmoid, tanh, leaky_relu, one member each),
- their derivatives with the bias gradient,
- the softmax cross-entropy: loss, gradient, bias gradient and hits;

and times the first calls (the compilation) in a fresh process on an empty inductor cache
and again on the filled one, then a step's five calls (two layers forward and backward,
one cross-entropy) in steady state, beside the C kernels doing the same.

    python benchmarks/torch_compile.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

K, UNITS, B, C = 4, 128, 64, 10


def activations(z):
    return torch.cat([z[0:1].relu(), z[1:2].sigmoid(), z[2:3].tanh(), F.leaky_relu(z[3:4], 0.01)])


def derivatives(dh, z, h):
    dz = torch.cat(
        [
            dh[0:1] * (h[0:1] > 0),
            dh[1:2] * (1 - h[1:2]) * h[1:2],
            dh[2:3] * (1 - h[2:3] * h[2:3]),
            torch.where(z[3:4] > 0, dh[3:4], dh[3:4] * 0.01),
        ]
    )
    return dz, dz.sum(dim=2)


def cross_entropy(logits, targets):
    logp = torch.log_softmax(logits, dim=1)
    loss = -logp.gather(1, targets).mean(dim=(1, 2))
    d = logp.exp().scatter_add(1, targets, -torch.ones_like(logp[:, :1])) / logits.shape[2]
    hits = (logits.argmax(dim=1, keepdim=True) == targets).sum(dim=(1, 2))
    return loss, d, d.sum(dim=2), hits


def inputs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(K, UNITS, B, generator=g)
    dh = torch.randn(K, UNITS, B, generator=g)
    logits = torch.randn(K, C, B, generator=g)
    targets = torch.randint(0, C, (K, 1, B), generator=g)
    return z, dh, logits, targets


def per_step_us(step, repeat: int = 1000) -> float:
    for _ in range(100):
        step()
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - start) / repeat * 1e6


def compiled_run() -> None:
    """In this (fresh) process: compile, time the first calls and the steady state."""
    torch.set_num_threads(1)
    act, der, xent = (torch.compile(f, dynamic=False) for f in (activations, derivatives,
                                                                 cross_entropy))  # fmt: skip
    z, dh, logits, targets = inputs()
    start = time.perf_counter()
    h = act(z)
    der(dh, z, h)
    xent(logits, targets)
    first = time.perf_counter() - start

    def step():
        h = act(z)
        act(z)
        der(dh, z, h)
        der(dh, z, h)
        xent(logits, targets)

    print(f"{first:.2f} {per_step_us(step):.1f}")


def native_step_us() -> float | None:
    """The same five calls through actlab's compiled kernels (None where unavailable)."""
    from actlab.engine import native

    lib = native.library()
    if lib is None:
        return None
    torch.set_num_threads(1)
    z, dh, logits, targets = inputs()
    h, dz, db, d, dbl = (torch.empty_like(t) for t in (z, z, z[..., 0], logits, logits[..., 0]))
    losses, hits = torch.empty(K), torch.empty(K, dtype=torch.long)
    codes = torch.tensor([1, 4, 5, 2], dtype=torch.int32)
    params = torch.tensor([[0, 0], [0, 0], [0, 0], [0.01, 0]], dtype=torch.float32)
    targets = targets.view(K, B).contiguous()
    cp, pp = codes.data_ptr(), params.data_ptr()
    zp, hp, dhp, dzp, dbp = (t.data_ptr() for t in (z, h, dh, dz, db))

    def step():
        for _ in range(2):
            lib.act_forward(K, UNITS, B, cp, pp, zp, hp, 1)
            lib.act_backward(K, UNITS, B, cp, pp, dhp, zp, hp, dzp, dbp, 1)
        lib.xent_forward_backward(K, C, B, logits.data_ptr(), targets.data_ptr(), d.data_ptr(),
                                  dbl.data_ptr(), losses.data_ptr(), hits.data_ptr(), 1)  # fmt: skip

    return per_step_us(step)


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        compiled_run()
        return
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        results = []
        for _ in ("cold", "warm"):
            out = subprocess.run([sys.executable, __file__, "--child"], env=env,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            first, steady = map(float, out.split()[-2:])
            results.append((first, steady))
    (cold, steady_cold), (warm, steady_warm) = results
    print(f"torch {torch.__version__}, 1 thread; shapes: {K} members x {UNITS} units x batch {B}")
    print(f"torch.compile: first calls {cold:.1f} s on a cold cache, {warm:.1f} s on a warm one")
    print(f"  a step's five calls in steady state: {steady_cold:.0f} / {steady_warm:.0f} us")
    native = native_step_us()
    if native is not None:
        print(f"actlab's compiled C kernels, the same five calls: {native:.0f} us "
              f"(built in about a second on a cold cache)")  # fmt: skip


if __name__ == "__main__":
    main()
