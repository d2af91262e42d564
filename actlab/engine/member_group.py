"""One activation's members stacked, and what every member's forward runs under.

- `GroupStack`: the members of one activation, their parameters and buffers stacked along a
  new leading dim (``torch.func.stack_module_state``'s layout, see `stack_state`).
- `attention_paths`: the attention kernels used in training and evaluation alike (torch's
  fused inference fast path off; under vmap on a CPU the math SDPA kernel, which vmap
  batches natively).
- `logits_of`: a forward's logits (a tuple's first element: Inception-style aux heads).
- `capturing` / `per_site`: the input of each activation site, one tensor per place.
- notices said once per process (`notice`), e.g. `FallbackNotice`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from actlab.engine.member_dropout import MaskSource, MemberDropout
from actlab.errors import ConfigError, ModelNotice
from actlab.nn.swap import InPlace


class FallbackNotice(ModelNotice):
    """Some members train one by one (the message says which and why)."""


_ANNOUNCED: set[tuple] = set()  # notices already given in this process


def notice(key: tuple, message: str, category: type[Warning] = ModelNotice) -> None:
    """Warn once per process, however many trainers are built (ThreadKeeper builds one)."""
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        warnings.warn(message, category, stacklevel=3)


@contextlib.contextmanager
def attention_paths(vmapped: bool, device_type: str = "cpu"):
    """The attention kernels every member runs, the same in training and evaluation.

    - torch's fused inference fast path of nn.MultiheadAttention and the transformer layers
      is off: inside vmap ``requires_grad`` reads False, so an eval forward would take it
      even when a backward follows (the diagnostics probe), and its op has no derivative;
      it also bakes relu/gelu in.
    - Under vmap on a CPU, ``F.scaled_dot_product_attention`` runs its math kernel (matmul,
      softmax), which vmap batches natively: the CPU flash kernel has no batching rule and
      would go through PyTorch's slow per-member fallback. CUDA kernels have batching rules
      and are left to torch."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        if vmapped and device_type == "cpu":
            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def logits_of(out):
    """The logits of a forward's output: the tensor itself, or the first element of a tuple
    or list (Inception-style auxiliary heads return ``(logits, aux_logits)`` in training;
    the auxiliary outputs are not trained)."""
    if isinstance(out, tuple | list) and out:
        return out[0]
    return out


# === dropout with per-member masks =======================================================


class GroupStack(nn.Module):
    """The members of one activation, stacked: parameter i is ``params[i]`` (G, ...)."""

    def __init__(self, activation: str, members: list[int], models: list[nn.Module], sites):
        super().__init__()
        self.activation = activation
        self.members = members
        first = models[0]
        self.param_names = [name for name, _ in first.named_parameters()]
        self.buffer_names = [name for name, _ in first.named_buffers()]
        try:
            params, buffers = stack_state(models)
        except (RuntimeError, KeyError, ValueError) as error:
            raise ConfigError(
                f"the members of {activation} do not have the same parameters ({error}); "
                "the model must be built the same way for every seed"
            ) from None
        # Frozen parameters (requires_grad False) stay frozen: stacked without a gradient,
        # left out of the optimizer (see `parameter_members`).
        self.params = nn.ParameterList(
            nn.Parameter(params[n].detach(), requires_grad=params[n].requires_grad)
            for n in self.param_names
        )
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{i}", buffers[name])
        self.frozen = [
            n for n, p in zip(self.param_names, self.params, strict=True) if not p.requires_grad
        ]
        # Parameters no gradient of the logits reaches (an auxiliary head): not trained, as
        # torch.optim skips a parameter whose .grad is None (found by _check_output).
        self.unreached: list[str] = []
        self.in_place = any(
            getattr(m, "inplace", False) is True or isinstance(m, InPlace) for m in first.modules()
        )
        self.sites = list(sites)
        self.source = MaskSource()
        self.has_dropout = False
        self.stacked = True
        self.reason = ""
        # The module whose code runs for every member: parameters are swapped in by
        # functional_call. Kept in a list: it is not part of the state_dict.
        self._base = [first]
        for module in first.modules():
            if isinstance(module, MemberDropout):
                module.source = self.source
                self.has_dropout = True

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def buffers_list(self) -> list[Tensor]:
        return [getattr(self, f"buffer_{i}") for i in range(len(self.buffer_names))]

    def state(self, clone_buffers: bool = False) -> tuple[dict, dict]:
        params = dict(zip(self.param_names, self.params, strict=True))
        buffers = self.buffers_list()
        if clone_buffers:
            buffers = [b.clone() for b in buffers]
        return params, dict(zip(self.buffer_names, buffers, strict=True))


def stack_state(models: Sequence[nn.Module]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The members' parameters and buffers stacked along a new leading dim, by name:
    ``torch.func.stack_module_state``'s layout and rules (a parameter requires grad when
    the members' do), which cannot be used itself: it refuses models of different classes,
    and every fx-rewritten member (a swap of calls in forward) is a GraphModule of a class
    of its own."""
    first = models[0]
    params = {}
    for name, param in first.named_parameters():
        stacked = torch.stack([_named(m.named_parameters(), name).detach() for m in models])
        params[name] = stacked.requires_grad_(param.requires_grad)
    buffers = {
        name: torch.stack([_named(m.named_buffers(), name) for m in models])
        for name, _ in first.named_buffers()
    }
    return params, buffers


def _named(items, name: str) -> Tensor:
    for key, value in items:
        if key == name:
            return value
    raise KeyError(name)


# === the stacked model ===================================================================


@contextlib.contextmanager
def capturing(base: nn.Module, sites: Sequence[str], captured: dict[str, list[Tensor]]):
    """Collect the input of each activation site in `captured[site]`, one entry per call
    (forward pre-hooks); `per_site` joins a reused module's calls into one site."""
    modules = dict(base.named_modules())

    def hook(site: str):
        return lambda _m, args: captured.setdefault(site, []).append(args[0])

    handles = [modules[site].register_forward_pre_hook(hook(site)) for site in sites]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def per_site(captured: dict[str, list[Tensor]], sites: Sequence[str]) -> tuple[Tensor, ...]:
    """One tensor per site (a place in the network), whatever the number of calls: a module
    called at several places in forward gives the values of all its calls, joined along the
    sample dim when their shapes agree (its units are the same units), else as (B, values)
    where every position of every call is a unit."""
    out = []
    for site in sites:
        calls = captured.get(site, [])
        if not calls:
            raise RuntimeError(f"activation site {site} was not called in forward")
        if len(calls) == 1:
            out.append(calls[0])
        elif all(c.shape[1:] == calls[0].shape[1:] for c in calls):
            out.append(torch.cat(calls, dim=0))
        else:
            out.append(torch.cat([c.flatten(1) for c in calls], dim=1))
    return tuple(out)


def grad_norm(weight: Tensor) -> Tensor:
    """(G,) L2 norm of each member's gradient of a stacked weight (0 without a gradient)."""
    if weight.grad is None:
        return torch.zeros(weight.shape[0], device=weight.device)
    dims = tuple(range(1, weight.dim()))
    return torch.linalg.vector_norm(weight.grad, dim=dims, dtype=torch.float32)


def per_member(tensors: dict[str, Tensor], count: int) -> list[dict[str, Tensor]]:
    """{name: (G, ...)} -> G dicts {name: member i's (...)} (views)."""
    parts = {name: t.unbind(0) for name, t in tensors.items()}
    return [{name: p[i] for name, p in parts.items()} for i in range(count)]


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
