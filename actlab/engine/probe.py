"""The diagnostics probe of a classifier's members: the fixed probe samples (a prefix of one
permutation fixed by PROBE_SEED, so a shard probes the same ones), one forward and backward
of all members on them in eval mode (gradient norms per layer, dead and saturated fractions,
pre-activation moments; see actlab.engine.diagnostics for the definitions), and the
diagnostics.csv rows they make. The optimizer is never touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actlab.engine import diagnostics as diagnostics_lib
from actlab.engine.memory import samples_within_budget

PROBE_SIZE = 512  # training samples of the fixed diagnostics probe batch
PROBE_SEED = 20_240_601  # fixes the probe samples, independent of the study's seeds
DIAGNOSTIC_NAMES = ("dead_frac", "saturated_frac", "preact_mean", "preact_std")


def probe_index(model: nn.Module, n: int, units: int, sized_for: int, device) -> Tensor:
    """The probe samples' indices among `n` training samples. Their count: a user's network
    says it (`model.probe_size`, from one member, whatever the member count); the built-in
    models fit ACTIVATION_BUDGET for `sized_for` members of `units` units per sample."""
    probe = torch.randperm(n, generator=torch.Generator().manual_seed(PROBE_SEED))
    own_size = getattr(model, "probe_size", None)
    if own_size is not None:
        size = own_size(PROBE_SIZE)
    else:
        size = samples_within_budget(units, sized_for, PROBE_SIZE)
    return probe[:size].to(device)


def layer_grad_norms(model: nn.Module) -> Tensor:
    """(K, L) norms of each member's weight gradient per layer (a model may say how)."""
    own = getattr(model, "layer_grad_norms", None)
    if own is not None:
        return own()
    return diagnostics_lib.layer_grad_norms(model.weight_layers())


def stacked_probe(
    model: nn.Module,
    params: list[Tensor],
    x: Tensor,
    y: Tensor,
    grad_norms: Tensor,
    objective=None,
) -> dict:
    """The probe of the built-in stacked models: all members in one forward and backward on
    the probe samples `x` (c, ...) and targets `y` (c, ...) of the study's loss (`objective`,
    actlab.engine.objective; default the mean cross-entropy); `grad_norms` (K, L) are the
    epoch's mean training gradient norms, passed through. `params`' gradients are cleared
    after."""
    model.eval()
    x = x.unsqueeze(0)
    preacts: list[Tensor] = []
    logits = model(x, preactivations=preacts)
    K, c = logits.shape[0], x.shape[1]
    if objective is None:
        losses = (
            F.cross_entropy(
                logits.reshape(K * c, -1), y.expand(K, c).reshape(K * c), reduction="none"
            )
            .view(K, c)
            .mean(dim=1)
        )
    else:
        losses = objective.member_losses(logits, y.expand(K, *y.shape))
    for p in params:
        p.grad = None
    losses.sum().backward()
    with torch.no_grad():
        probe_norms = layer_grad_norms(model)
        detached = [p.detach() for p in preacts]
        dead, saturated = diagnostics_lib.unit_fractions(detached, model.member_activations())
        mean, std = diagnostics_lib.preact_moments(detached)
    for p in params:
        p.grad = None
    model.train()
    return {
        "grad_norm": grad_norms.tolist(),
        "probe_grad_norm": probe_norms.tolist(),
        "dead_frac": dead.tolist(),
        "saturated_frac": saturated.tolist(),
        "preact_mean": mean.tolist(),
        "preact_std": std.tolist(),
    }


def diagnostics_rows(fields: dict, diag: dict, k: int) -> list[dict]:
    """Member k's diagnostics.csv rows, one per layer, each starting with `fields` (the
    columns that name the member). A user model may have more activation sites than weight
    layers: site i is reported on row `layer` i + 1, without gradient norms beyond the
    weight layers; the output layer has no activation, so no unit fractions."""
    rows = []
    num_layers = len(diag["grad_norm"][k])
    hidden = len(diag["dead_frac"][k]) if "dead_frac" in diag else 0
    for layer in range(max(num_layers, hidden)):
        row = {**fields, "layer": layer + 1}
        if layer < num_layers:
            row["grad_norm"] = diag["grad_norm"][k][layer]
            row["probe_grad_norm"] = diag["probe_grad_norm"][k][layer]
        if layer < hidden:
            for name in DIAGNOSTIC_NAMES:
                row[name] = diag[name][k][layer]
        rows.append(row)
    return rows
