"""Diagnostics of the stacked GPT (actlab.nn.gpt): gradient flow per layer, dead and
saturated FFN units. The contract of actlab.engine.diagnostics (the rows and columns of
diagnostics.csv and their definitions), on the GPT's layers:

    layer 1 tok (token embedding), 2 pos (position embedding), then per block b
    (b = 1..L): attention qkv, attention out, FFN in (W1), FFN out (W2); last: head

- ``grad_norm``: the L2 norm of each member's gradient of each layer's weight, before
  clipping, averaged over the epoch's steps (one reduction per layer and step, no host
  sync: `GradientSums`);
- ``probe_grad_norm``: the same on a fixed probe batch (`probe_windows`: PROBE_WINDOWS
  windows of the train split at positions fixed by PROBE_SEED, the same whatever the
  number of members or the shard), of each member's mean token cross-entropy;
- ``dead_frac``, ``saturated_frac``, ``preact_mean``, ``preact_std`` of the FFN
  activation's input of block b on that probe batch, on block b's FFN-in row (the
  activation's input is W1's output). A unit is one hidden feature of the FFN; its values
  are every probe window's every position. A gated unit ``a * gate(b)`` (swiglu, geglu,
  ...) is measured on its gate's input b with the gate's activation (silu, gelu, ...):
  it passes nothing, and no gradient to W_a, where its gate is 0
  (actlab.engine.diagnostics.gate_input).

The definitions of dead and saturated are actlab.engine.diagnostics.unit_fractions'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from actlab.catalog import gated
from actlab.catalog import registry as catalog
from actlab.engine import diagnostics as diagnostics_lib

PROBE_WINDOWS = 32  # windows of `context` tokens in the probe batch
PROBE_SEED = 20_240_601  # fixes the probe windows, independent of the study's seeds
SITE_COLUMNS = ("dead_frac", "saturated_frac", "preact_mean", "preact_std")


def weight_names(layers: int) -> list[str]:
    """The weights of the GPT's layers, in diagnostics order (plain GPT parameter names)."""
    names = ["tok.weight", "pos.weight"]
    for b in range(layers):
        p = f"blocks.{b}."
        names += [p + "attn.qkv.weight", p + "attn.proj.weight"]
        names += [p + "ffn.fc1.weight", p + "ffn.fc2.weight"]
    return [*names, "head.weight"]


def layer_labels(layers: int) -> dict[int, str]:
    """diagnostics.csv's layer number -> its name (``block 1 FFN in``), for a report."""
    labels = ["token embedding", "position embedding"]
    for b in range(1, layers + 1):
        labels += [f"block {b} attention qkv", f"block {b} attention out"]
        labels += [f"block {b} FFN in", f"block {b} FFN out"]
    return {i + 1: name for i, name in enumerate([*labels, "head"])}


def ffn_rows(layers: int) -> list[int]:
    """The layer number of each block's FFN-in row (where its activation is reported)."""
    return [2 + 4 * b + 3 for b in range(layers)]


def _stacked(model, name: str) -> list[tuple[Tensor, Sequence[int] | None]]:
    """The stacked tensors of plain parameter `name`: the shared (K, ...) one, or one per
    activation (G_a, ...) with its members (an FFN weight)."""
    key = name.replace(".", "__")
    if key in model.shared:
        return [(model.shared[key], None)]
    return [
        (params[key], owners) for params, owners in zip(model.ffn, model.ffn_owner, strict=True)
    ]


def layer_grad_norms(model) -> Tensor:
    """(K, L) float32: ``out[k, l] = ||grad of member k's weight of layer l||_2`` (0 where
    there is no gradient), in the layer order of `weight_names`."""
    K = model.num_members
    names = weight_names(model.config.layers)
    device = model.shared["tok__weight"].device
    out = torch.zeros(K, len(names), device=device)
    for layer, name in enumerate(names):
        for tensor, owners in _stacked(model, name):
            if tensor.grad is None:
                continue
            dims = tuple(range(1, tensor.dim()))
            norms = torch.linalg.vector_norm(tensor.grad, dim=dims, dtype=torch.float32)
            if owners is None:
                out[:, layer] = norms
            else:
                out[list(owners), layer] = norms
    return out


class GradientSums:
    """The per-step gradient norms of an epoch, summed on the device (no sync per step)."""

    def __init__(self, model) -> None:
        self.model = model
        self.sum = torch.zeros(
            model.num_members, len(weight_names(model.config.layers)),
            device=model.shared["tok__weight"].device,
        )  # fmt: skip
        self.steps = 0

    def add(self) -> None:
        """After a backward, before clipping: add this step's norms."""
        self.sum += layer_grad_norms(self.model)
        self.steps += 1

    def mean_and_reset(self) -> Tensor:
        mean = self.sum / max(1, self.steps)
        self.sum = torch.zeros_like(self.sum)
        self.steps = 0
        return mean


def probe_windows(train_tokens: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """The probe batch: inputs and targets (PROBE_WINDOWS, context) at start positions
    drawn from a generator seeded by PROBE_SEED (fewer windows when the split is short)."""
    n = len(train_tokens) - context
    if n < 1:
        raise ValueError(f"the train split ({len(train_tokens)} tokens) is shorter than a window")
    generator = torch.Generator().manual_seed(PROBE_SEED)
    starts = torch.randint(0, n, (PROBE_WINDOWS,), generator=generator).to(train_tokens.device)
    windows = train_tokens[starts.unsqueeze(-1) + torch.arange(context + 1, device=starts.device)]
    return windows[:, :-1], windows[:, 1:]


def probe(model, x: Tensor, y: Tensor, alive: Sequence[bool]) -> dict[str, Tensor]:
    """Diagnostics of every member on the probe batch x, y (B, T): each (K, L) for the
    gradient norms, (K, layers) for the FFN sites. One forward of all members on the same
    windows, one backward of the alive members' summed mean token cross-entropies (each
    member's gradient is its own); the gradients are cleared after."""
    K = model.num_members
    captured: list[list[Tensor]] = [[] for _ in model.activations]
    hooks = [
        act.register_forward_pre_hook(lambda _m, args, a=a: captured[a].append(args[0].detach()))
        for a, act in enumerate(model.acts)
    ]
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            logits = model(x.unsqueeze(0))  # (K, B, T, V)
            flat = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y.expand(K, *y.shape).reshape(-1),
                reduction="none",
            )
            losses = flat.view(K, -1).mean(dim=1)
            mask = torch.tensor(list(alive), device=losses.device)
            torch.where(mask, losses, 0.0).sum().backward()
        out = {"probe_grad_norm": layer_grad_norms(model)}
    finally:
        for hook in hooks:
            hook.remove()
        for p in params:
            p.grad = None
        model.train(was_training)
    out.update(_site_measures(model, captured))
    return out


@torch.no_grad()
def _site_measures(model, captured: list[list[Tensor]]) -> dict[str, Tensor]:
    """Dead/saturated fractions and moments of each block's FFN activation input, (K, L)."""
    K, layers = model.num_members, model.config.layers
    device = model.shared["tok__weight"].device
    out = {name: torch.full((K, layers), float("nan"), device=device) for name in SITE_COLUMNS}
    for a, activation in enumerate(model.activations):
        calls = captured[a]
        if len(calls) != layers:
            raise RuntimeError(
                f"{activation}: {len(calls)} FFN activation calls for {layers} blocks"
            )
        preacts = list(calls)  # (G_a, B * T, width) each: units on the last dim
        module = model.acts[a]
        if gated.is_gated(activation):
            preacts = [diagnostics_lib.gate_input(z) for z in preacts]
            module = catalog.get(gated.gate_spec(activation))
        owners = list(model.ffn_owner[a])
        dead, saturated = diagnostics_lib.unit_fractions(preacts, [module] * len(owners))
        mean, std = diagnostics_lib.preact_moments(preacts)
        for name, value in zip(SITE_COLUMNS, (dead, saturated, mean, std), strict=True):
            out[name][owners] = value
    return out


def rows(fields: dict, k: int, grad_norm: Tensor, measured: dict[str, Tensor]) -> list[dict]:
    """Member k's diagnostics.csv rows: one per layer, `fields` naming the member (depth,
    member, activation, seed, lr, epoch), the FFN sites on their FFN-in rows."""
    layers = grad_norm.shape[1]
    sites = {row: b for b, row in enumerate(ffn_rows((layers - 3) // 4))}
    grad, probe_grad = grad_norm[k].tolist(), measured["probe_grad_norm"][k].tolist()
    site_values = {name: measured[name][k].tolist() for name in SITE_COLUMNS}
    out = []
    for layer in range(1, layers + 1):
        row = {**fields, "layer": layer, "grad_norm": grad[layer - 1],
               "probe_grad_norm": probe_grad[layer - 1]}  # fmt: skip
        if layer in sites:
            row.update({name: site_values[name][sites[layer]] for name in SITE_COLUMNS})
        out.append(row)
    return out
