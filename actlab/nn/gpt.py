"""A small decoder-only transformer: one plain ``nn.Module`` (GPT), and K of them stacked.

GPT (Radford et al. 2018/2019; the pre-norm layout of GPT-2, as in Karpathy's nanoGPT):

    h_0 = E[x] + P[0:T]                            token and position embeddings
    h   = h + W_o attn(LN_1(h))                    causal multi-head self-attention
    h   = h + FFN(LN_2(h))                         feed-forward, activation from the study
    logits = W_head LN_f(h)                        (batch, time, vocab)

Attention is ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``. The FFN is
``W2 act(W1 x)`` with 4 * width hidden units; a gated activation (swiglu, geglu, ...) makes
it ``W2 (a * gate(b))`` with ``[a, b] = W1 x`` and 2/3 of the hidden units, so that every
member has the same parameter count up to the biases (actlab.catalog.gated.gated_hidden).

Init (GPT-2): weights and embeddings N(0, 0.02), the residual projections (W_o, W2) N(0,
0.02 / sqrt(2 layers)), biases 0, LayerNorm 1 and 0; drawn from one generator seeded with
the member's seed, so members of one seed whose FFNs have the same shape start equal.

StackedGPT holds K members as one model: every parameter of the plain model becomes one
tensor with a leading member dim (K, ...), except the FFN's, which are stacked per
activation (its members only: gated and plain FFNs differ in shape). Each linear layer is
one ``torch.baddbmm`` over the members, attention runs on all members' heads at once.
The same arithmetic as K plain GPTs up to float rounding, arranged for a CPU where the
step is bound by passes over memory (benchmarks/lm.py; docs/benchmarks.md):

- each LayerNorm's affine map is folded into the linear layer after it (`_fold_norm`);
- q, k and v are three products, in the layout whose gradients SDPA returns;
- the residual is added by the matmul of attn.proj and fc2 (`_residual`);
- members run activation-major, so each activation's FFN reads a slice, not a gather;
- `losses` fuses the head with the cross-entropy (actlab.nn.lm_head).

``member_state_dict(k)`` is member k as a GPT state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actlab.catalog import gated
from actlab.catalog import registry as catalog
from actlab.config import ExperimentConfig, Member
from actlab.errors import ConfigError
from actlab.nn.lm_head import head_cross_entropy

VOCAB = 256
LN_EPS = 1e-5  # nn.LayerNorm's default
INIT_STD = 0.02
FFN_MULTIPLIER = 4


def ffn_width(activation: str, width: int) -> int:
    """The FFN's hidden units for `activation`: 4 * width, 2/3 of it when gated."""
    return gated.ffn_hidden(activation, FFN_MULTIPLIER * width)


def activation_module(spec: str) -> nn.Module:
    """The catalog module of a FFN activation (never in place); gated specs act on the last
    dim. Refuses what a FFN cannot take (learnable and other non-elementwise ones)."""
    entry, params = catalog.resolve(spec)
    if not gated.is_gated(spec):
        if not entry.elementwise:
            raise ConfigError(
                f"activation {spec!r} is not elementwise and not a gated unit; --net gpt takes "
                "an elementwise activation or one of glu, bilinear, reglu, geglu, swiglu"
            )
        if entry.learnable or any(True for _ in catalog.get(spec).parameters()):
            raise ConfigError(
                f"activation {spec!r} has learnable parameters; --net gpt does not stack them yet"
            )
    elif (params or {}).get("dim", -1) != -1:
        raise ConfigError(f"gated activation {spec!r} must split the last dim (dim=-1)")
    if (params or {}).get("inplace"):
        return catalog.get(spec, inplace=False)
    return catalog.get(spec)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        hidden = ffn_width(activation, width)
        self.gated = gated.is_gated(activation)
        self.fc1 = nn.Linear(width, 2 * hidden if self.gated else hidden)
        self.act = activation_module(activation)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, activation: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.ffn = FeedForward(width, activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    """One member: tokens (B, T) -> logits (B, T, vocab). See the module docstring."""

    def __init__(
        self,
        activation: str = "gelu",
        *,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        context: int = 64,
        vocab: int = VOCAB,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"width {width} must be a multiple of heads {heads}")
        self.context = context
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, activation) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.reset_parameters(torch.Generator().manual_seed(0 if seed is None else seed))

    @classmethod
    def from_config(cls, config: ExperimentConfig, activation: str, seed: int) -> GPT:
        return cls(
            activation,
            width=config.width,
            layers=config.layers,
            heads=config.heads,
            context=config.context,
            seed=seed,
        )

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """GPT-2's init (module docstring), drawn in parameter order from `generator`."""
        residual_std = INIT_STD / math.sqrt(2 * len(self.blocks))
        for name, p in self.named_parameters():
            if name.startswith("ln") or ".ln" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                residual = name.endswith(("attn.proj.weight", "ffn.fc2.weight"))
                p.normal_(0.0, residual_std if residual else INIT_STD, generator=generator)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[-1]
        if self.context < T:
            raise ValueError(f"{T} tokens is more than the context of {self.context}")
        x = self.tok(tokens) + self.pos.weight[:T]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_line(config: ExperimentConfig) -> str:
    """``parameters per member: relu 42,624 (FFN 256 units), swiglu 42,644 (gated, 171)``."""
    parts = []
    for activation in config.activations:
        count = parameter_count(GPT.from_config(config, activation, 0))
        hidden = ffn_width(activation, config.width)
        kind = "gated, " if gated.is_gated(activation) else ""
        parts.append(f"{activation} {count:,} (FFN {kind}{hidden} units)")
    return "parameters per member: " + ", ".join(parts)


# --- the stacked model ----------------------------------------------------------------------


def _key(name: str) -> str:
    return name.replace(".", "__")


class StackedGPT(nn.Module):
    """K GPT members as one model (module docstring). Members are seed-major, as
    ``config.members_for``; the FFN parameters of activation a are stacked over its members
    (``ffn_owner[a]``), every other parameter over all K."""

    def __init__(self, config: ExperimentConfig, members: Sequence[Member]) -> None:
        super().__init__()
        self.members = list(members)
        self.num_members = K = len(self.members)
        self.config = config
        self.heads = config.heads
        self.seeds = tuple(dict.fromkeys(m.seed for m in self.members))
        self.activations = tuple(dict.fromkeys(m.activation for m in self.members))
        self.register_buffer(
            "member_seed",
            torch.tensor([self.seeds.index(m.seed) for m in self.members]),
            persistent=False,
        )
        plain = [GPT.from_config(config, m.activation, m.seed) for m in self.members]
        self.acts = nn.ModuleList(activation_module(a) for a in self.activations)
        group = [self.activations.index(m.activation) for m in self.members]
        self.ffn_owner = [
            tuple(k for k in range(K) if group[k] == a) for a in range(len(self.activations))
        ]
        self.parameter_counts = {
            a: parameter_count(plain[self.ffn_owner[i][0]]) for i, a in enumerate(self.activations)
        }
        self.shared = nn.ParameterDict()
        self.ffn = nn.ModuleList(nn.ParameterDict() for _ in self.activations)
        with torch.no_grad():
            for name, _ in plain[0].named_parameters():
                if ".ffn." in name:
                    for a, owners in enumerate(self.ffn_owner):
                        stack = torch.stack([plain[k].get_parameter(name) for k in owners])
                        self.ffn[a][_key(name)] = nn.Parameter(stack.clone())
                else:
                    stack = torch.stack([p.get_parameter(name) for p in plain])
                    self.shared[_key(name)] = nn.Parameter(stack.clone())
        self._names = [name for name, _ in plain[0].named_parameters()]
        # The forward's member order: activation-major (see `forward`), None if it is K's.
        self.order = [k for owners in self.ffn_owner for k in owners]
        identity = self.order == list(range(K))
        order = torch.tensor(self.order)
        self.register_buffer("permutation", None if identity else order, persistent=False)
        self.register_buffer("inverse", None if identity else order.argsort(), persistent=False)
        self.register_buffer("order_seed", self.member_seed[order], persistent=False)

    # -- interface used by the engine ---------------------------------------------------

    def parameter_members(self) -> list[tuple[nn.Parameter, object]]:
        """(p, None) for the K-stacked parameters, (p, owners) for an FFN group's."""
        out: list[tuple[nn.Parameter, object]] = [(p, None) for p in self.shared.values()]
        for params, owners in zip(self.ffn, self.ffn_owner, strict=True):
            out += [(p, owners) for p in params.values()]
        return out

    def dropout_generators(self) -> list[torch.Generator]:
        return []

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k's weights as the state dict of its plain GPT (copies, on the CPU)."""
        a = self.activations.index(self.members[k].activation)
        i = self.ffn_owner[a].index(k)
        out = {}
        for name in self._names:
            if ".ffn." in name:
                out[name] = self.ffn[a][_key(name)][i].detach().cpu().clone()
            else:
                out[name] = self.shared[_key(name)][k].detach().cpu().clone()
        return out

    def export_member(self, k: int) -> GPT:
        member = self.members[k]
        plain = GPT.from_config(self.config, member.activation, member.seed)
        plain.load_state_dict(self.member_state_dict(k))
        return plain

    # -- forward ------------------------------------------------------------------------
    #
    # Inside the forward the members run in activation-major order (`self.order`), so that
    # each activation's FFN takes a contiguous slice of the residual stream (a view) instead
    # of a gather and a scatter per layer; the K-stacked weights are gathered into that
    # order (small tensors) and the outputs put back in member order at the end. Each
    # LayerNorm's affine map is folded into the linear layer after it (`_fold_norm`).

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (S, B, T): one batch per seed (member k reads its seed's), or (1, B, T)
        shared by all members. Returns logits (K, B, T, vocab)."""
        B, T = tokens.shape[1:]
        h = self._trunk(tokens)
        weight, bias = self._head()
        logits = _linear(h, weight, bias)
        return self._member_order(logits).view(self.num_members, B, T, -1)

    def losses(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """(K,) mean token cross-entropy of each member on its seed's windows: tokens and
        targets (S, B, T) as in `forward`. The head and the loss are one fused autograd
        step (actlab.nn.lm_head): the same value and gradients as ``F.cross_entropy`` on
        the logits of `forward`, without keeping (K, B, T, vocab) twice."""
        h = self._trunk(tokens)
        targets = self._member_tokens(targets).reshape(self.num_members, -1)
        weight, bias = self._head()
        return self._member_order(head_cross_entropy(h, weight, bias, targets))

    def _member_tokens(self, tokens: Tensor) -> Tensor:
        """(S, B, T) per seed -> (K, B, T) per member, in the forward's order."""
        S, B, T = tokens.shape
        if S == 1:
            return tokens.expand(self.num_members, B, T)
        return tokens.index_select(0, self.order_seed)

    def _w(self, name: str) -> Tensor:
        """The K-stacked parameter `name`, in the forward's member order."""
        p = self.shared[name]
        return p if self.permutation is None else p.index_select(0, self.permutation)

    def _member_order(self, t: Tensor) -> Tensor:
        return t if self.permutation is None else t.index_select(0, self.inverse)

    def _trunk(self, tokens: Tensor) -> Tensor:
        """The final hidden states before ln_f's affine map: (K, B * T, width), normalized."""
        tokens = self._member_tokens(tokens)
        K, B, T = tokens.shape
        table = self._w("tok__weight")
        vocab = table.shape[1]
        offsets = (torch.arange(K, device=tokens.device) * vocab).view(K, 1, 1)
        x = F.embedding(tokens + offsets, table.reshape(K * vocab, -1))
        x = x + self._w("pos__weight")[:, :T].unsqueeze(1)
        h = x.reshape(K, B * T, -1)
        for layer in range(self.config.layers):
            h = self._block(layer, h, B, T)
        return F.layer_norm(h, h.shape[-1:], eps=LN_EPS)

    def _head(self) -> tuple[Tensor, Tensor]:
        return _fold_norm(
            self._w("ln_f__weight"),
            self._w("ln_f__bias"),
            self._w("head__weight"),
            self._w("head__bias"),
        )

    def _block(self, layer: int, h: Tensor, B: int, T: int) -> Tensor:
        p = f"blocks__{layer}__"
        K, N, C = h.shape
        H = self.heads
        weight, bias = _fold_norm(
            self._w(p + "ln1__weight"),
            self._w(p + "ln1__bias"),
            self._w(p + "attn__qkv__weight"),
            self._w(p + "attn__qkv__bias"),
        )
        a = F.layer_norm(h, (C,), eps=LN_EPS)
        # q, k and v as three products, each (K, N, C) and viewed (K B, H, T, C / H): the
        # attention's gradients come back in that layout, so none is copied into a (K, N,
        # 3C) one (one qkv product would need a strided gather of the three per layer).
        q, k, v = (
            _linear(a, w, b).view(K * B, T, H, C // H).transpose(1, 2)
            for w, b in zip(weight.split(C, dim=1), bias.split(C, dim=1), strict=True)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(K, N, C)
        h = _residual(h, y, self._w(p + "attn__proj__weight"), self._w(p + "attn__proj__bias"))
        a = F.layer_norm(h, (C,), eps=LN_EPS)
        return self._ffn(layer, h, a, self._w(p + "ln2__weight"), self._w(p + "ln2__bias"))

    def _ffn(
        self, layer: int, h: Tensor, x: Tensor, norm_weight: Tensor, norm_bias: Tensor
    ) -> Tensor:
        """h + FFN(x): each activation's members (a contiguous slice in the forward's order)
        through their FFN, with ln2's affine map (norm_weight, norm_bias) folded into fc1."""
        prefix = f"blocks__{layer}__ffn__"
        sizes = [len(owners) for owners in self.ffn_owner]
        pieces = (h, x, norm_weight, norm_bias)
        parts = zip(*(t.split(sizes) for t in pieces), strict=True)
        outs = [self._ffn_group(a, prefix, *part) for a, part in enumerate(parts)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _ffn_group(
        self, a: int, prefix: str, h: Tensor, x: Tensor, norm_weight: Tensor, norm_bias: Tensor
    ) -> Tensor:
        w = self.ffn[a]
        weight, bias = _fold_norm(
            norm_weight, norm_bias, w[prefix + "fc1__weight"], w[prefix + "fc1__bias"]
        )
        z = _linear(x, weight, bias)
        return _residual(h, self.acts[a](z), w[prefix + "fc2__weight"], w[prefix + "fc2__bias"])


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per member ``x[k] @ weight[k].T + bias[k]``: x (K, N, in), weight (K, out, in)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _residual(h: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``h + _linear(x, weight, bias)`` with the residual added by the matmul itself (it
    accumulates into h + bias): one pass over the residual stream fewer."""
    return torch.baddbmm(h + bias.unsqueeze(1), x, weight.transpose(1, 2))


def _fold_norm(
    norm_weight: Tensor, norm_bias: Tensor, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor]:
    """A LayerNorm's affine map folded into the linear layer after it, per member:
    ``(g * xhat + beta) W^T + c = xhat (W diag(g))^T + (W beta + c)``, so that the stacked
    activations see one linear layer instead of a LayerNorm affine pass and a linear one
    (forward and backward); autograd takes the gradients of g, beta, W, c through these
    small products. norm_weight, norm_bias (K, in); weight (K, out, in); bias (K, out)."""
    folded = weight * norm_weight.unsqueeze(1)
    return folded, torch.baddbmm(bias.unsqueeze(-1), weight, norm_bias.unsqueeze(-1)).squeeze(-1)
