"""`actlab extract`: one trained member of a run directory as a plain ``nn.Module``.

The checkpoint holds the stacked model of the last trained depth (actlab.study.store);
member k of it becomes the plain network it stands for:

- ``--net gpt``: an ``actlab.nn.gpt.GPT`` (importable; built with the run's width, layers,
  heads and context), whose ``load_state_dict`` takes the saved file as it is;
- the built-in MLP and CNN: the ``nn.Sequential`` of ``StackedModel.export_member``; a
  --net mlp study with gated activations (trained through the vmap stack): the
  ``nn.Sequential`` of ``actlab.nn.mlp_builder.plain_mlp`` with the member's own widths.

The state dict is saved on the CPU with ``torch.save``; the constructor call that loads it
is part of the result, so that the file is useful without actlab's run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from actlab.catalog import registry as catalog
from actlab.config import ExperimentConfig, Member, members_for
from actlab.errors import ConfigError, RunDirError
from actlab.study import store
from actlab.study.checkpoint import load_checkpoint


@dataclass
class Extracted:
    """A member taken out of a run: the plain module, who it is, and how to rebuild it."""

    module: nn.Module
    member: Member
    epoch: int
    constructor: str  # Python that builds an empty module of the same shape

    def state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


def _engine(checkpoint) -> tuple[dict, int | None, int]:
    """(engine state, depth, epoch) of a checkpoint, a dict or a typed checkpoint."""
    get = checkpoint.get if isinstance(checkpoint, dict) else lambda k: getattr(checkpoint, k)
    return get("engine"), get("depth"), int(get("epoch"))


def find_member(config: ExperimentConfig, depth, activation: str, seed: int, lr) -> Member:
    """The member of `depth` with that activation (any spelling of it), seed and lr."""
    label = catalog.canonical_label(activation)
    members = members_for(config, depth)
    hits = [
        m
        for m in members
        if catalog.canonical_label(m.activation) == label
        and m.seed == seed
        and (lr is None or abs(m.lr - lr) <= 1e-12 * max(1.0, m.lr))
    ]
    if len(hits) > 1:
        lrs = ", ".join(f"{m.lr:g}" for m in hits)
        raise ConfigError(f"several members match (lrs {lrs}); add --lr")
    if not hits:
        have = sorted({f"{m.activation} seed {m.seed} lr {m.lr:g}" for m in members})
        raise ConfigError(
            f"no member {activation} seed {seed}{'' if lr is None else f' lr {lr:g}'} in this "
            f"run; it has: {', '.join(have[:12])}{' ...' if len(have) > 12 else ''}"
        )
    return hits[0]


def extract_member(
    run_dir: str | Path, activation: str, seed: int, lr: float | None = None
) -> Extracted:
    """Member (activation, seed, lr) of the last checkpoint of `run_dir` (see the module)."""
    path = Path(run_dir)
    run = store.read_run(path)
    checkpoint = load_checkpoint(path / store.CHECKPOINT_FILE)
    if checkpoint is None:
        raise RunDirError(f"{path} has no checkpoint yet: no epoch finished; train it first")
    engine, depth, epoch = _engine(checkpoint)
    if "shards" in engine:
        raise RunDirError(
            f"{path} was trained on Ray (sharded checkpoint); extract is not supported there"
        )
    config = run.config
    member = find_member(config, depth, activation, seed, lr)
    members = members_for(config, depth)
    if config.model == "gpt":
        from actlab.nn.gpt import GPT, StackedGPT

        model = StackedGPT(config, members)
        model.load_state_dict(engine["model"])
        plain = model.export_member(member.index)
        constructor = (
            f"actlab.nn.gpt.GPT({member.activation!r}, width={config.width}, "
            f"layers={config.layers}, heads={config.heads}, context={config.context})"
        )
        assert isinstance(plain, GPT)
    elif _gated_mlp(config):
        plain, constructor = _builder_member(config, run.dataset, members, member, engine, depth)
    elif config.model in ("mlp", "cnn"):
        from actlab.nn.models import build_model

        dataset = run.dataset
        model = build_model(
            config,
            members,
            tuple(dataset["input_shape"]),
            int(dataset["num_classes"]),
            "cpu",
            depth,
        )
        model.load_state_dict(engine["model"])
        plain = model.export_member(members.index(member))
        constructor = f"the nn.Sequential printed by print(module): {plain!r}".replace("\n", " ")
    else:
        raise ConfigError(
            "extract takes the built-in nets (gpt, mlp, cnn); your own model's members are "
            "in the checkpoint's stacked state"
        )
    plain.eval()
    return Extracted(plain.cpu(), member, epoch, constructor)


def _gated_mlp(config: ExperimentConfig) -> bool:
    from actlab.nn.mlp_builder import needs_builder

    return needs_builder(config)


def _builder_member(config, dataset: dict, members, member: Member, engine: dict, depth):
    """Member of a --net mlp study with gated activations (trained through the vmap stack,
    actlab.nn.mlp_builder): its group's stacked parameters ``groups.{g}.params.{i}`` (g:
    the activation's place among the members, i: the parameter's place in the module) at
    the member's place in the group, loaded into `plain_mlp` of its own widths."""
    from actlab.nn.mlp_builder import builder_for, member_widths, plain_mlp

    shape, classes = tuple(dataset["input_shape"]), int(dataset["num_classes"])
    builder = builder_for(config, shape, classes, depth)
    widths = member_widths(member.activation, builder.fan_in, builder.hidden, classes)
    plain = plain_mlp(member.activation, builder.fan_in, widths, classes, config.dropout)
    groups = list(dict.fromkeys(m.activation for m in members))
    group = groups.index(member.activation)
    row = [m for m in members if m.activation == member.activation].index(member)
    state = engine["model"]
    with torch.no_grad():
        for i, param in enumerate(plain.parameters()):
            param.copy_(state[f"groups.{group}.params.{i}"][row])
    constructor = (
        f"actlab.nn.mlp_builder.plain_mlp({member.activation!r}, {builder.fan_in}, "
        f"{widths}, {classes}, dropout={config.dropout})"
    )
    return plain, constructor


def save_member(extracted: Extracted, output: str | Path) -> Path:
    out = Path(output)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a directory; give a file name such as member.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(extracted.state_dict(), out)
    return out
