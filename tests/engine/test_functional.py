"""Oracle: a user's network trained stacked (vmap over the members of each activation)
trains exactly like each member built alone after torch.manual_seed(seed) and trained as a
plain nn.Module with its own torch.optim.Adam, one by one, on the same batches and the same
dropout masks. Also for the one-by-one fallback, and for a subset of members (a shard)."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from fixtures.engine import adam_epochs
from torch import nn

import actlab.nn.user_model
from actlab.config import ExperimentConfig, members_for
from actlab.engine.batches import DeviceData
from actlab.engine.trainer import Trainer, train
from actlab.engine.vmap_stack import FallbackNotice, StackedUserModel
from actlab.nn.models import DROPOUT_SEED_OFFSET

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH, EPOCHS = 40, 8, 20  # 5 steps an epoch: 100 steps
CLASSES = 3
TORCH_ACTS = {"relu": (nn.ReLU, F.relu), "gelu": (nn.GELU, F.gelu), "tanh": (nn.Tanh, torch.tanh)}

# The user's files (convolutions before BatchNorm without bias, as usual: such a bias gets
# a zero gradient up to rounding, which Adam turns into steps of size lr in any direction):
# a module written with ReLU (modules and an F.relu call, swapped by
# actlab) and builders that take the activation factory.
NETS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Residual(nn.Module):
        def __init__(self, channels, act=nn.ReLU, fn=F.relu):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.act = act()
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.fn = fn

        def forward(self, x):
            out = self.act(self.bn1(self.conv1(x)))
            return self.fn(self.bn2(self.conv2(out)) + x)  # an F.relu call in forward


    class Net(nn.Module):
        def __init__(self, act=nn.ReLU, fn=F.relu):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.act = act()
            self.block = Residual(4, act, fn)
            self.drop = nn.Dropout(0.25)
            self.head = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            x = self.block(self.act(self.bn(self.stem(x))))
            return self.head(self.drop(x.flatten(1)))


    def build(act):  # for learnable activations (PReLU: parameters per member and place)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), act(),
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 6 * 6, 16), act(), nn.Linear(16, 3),
        )


    class Branchy(nn.Module):  # data-dependent control flow: cannot be vmapped
        def __init__(self, act):
            super().__init__()
            self.body = build(act)

        def forward(self, x):
            if x.sum() > -1e9:  # always true, but only Python knows
                x = x * 1.0
            return self.body(x)


    def branchy(act):
        return Branchy(act)


    class Tied(nn.Module):  # one weight at two places
        def __init__(self):
            super().__init__()
            self.inp, self.act = nn.Linear(36, 36), nn.ReLU()
            self.mid = nn.Linear(36, 36)
            self.mid.weight = self.inp.weight
            self.head = nn.Linear(36, 3)

        def forward(self, x):
            return self.head(self.act(self.mid(self.act(self.inp(x.flatten(1))))))
    """
)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "nets.py"
    path.write_text(NETS)
    namespace: dict = {}
    exec(compile(NETS, str(path), "exec"), namespace)
    return path, namespace


def approx_number(value):
    """Numbers to float rounding (rel 1e-5); text and None exactly (pytest >= 9.2 refuses
    a relative tolerance on a str)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return pytest.approx(value, rel=1e-5)
    return value


def device_data() -> DeviceData:
    generator = torch.Generator().manual_seed(123)
    x = torch.rand(N, 1, 6, 6, generator=generator)
    y = torch.randint(0, CLASSES, (N,), generator=generator)
    empty = torch.zeros(0, 1, 6, 6)
    return DeviceData(
        x, y, empty, torch.zeros(0, dtype=torch.long), x[:16], y[:16], CLASSES, (1, 6, 6)
    )


class ReplayDropout(nn.Module):
    """The documented mask rule: bernoulli(1 - p) / (1 - p) from the member's generator
    seeded with seed + DROPOUT_SEED_OFFSET, one draw per call, in forward order."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x):
        if not self.training:
            return x
        keep = 1 - self.p
        mask = torch.empty(x.shape).bernoulli_(keep, generator=self.generator).div_(keep)
        return x * mask


def plain_member(make, seed: int) -> nn.Module:
    """The member as the user builds it alone, dropout replaced by the mask replay."""
    torch.manual_seed(seed)
    model = make()
    generator = torch.Generator().manual_seed(seed + DROPOUT_SEED_OFFSET)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, ReplayDropout(child.p, generator))
    return model


def train_plain(make, member, data: DeviceData) -> tuple[nn.Module, list[float]]:
    """One member alone: Adam, batches of its seed's permutation, mean loss per epoch."""
    model = plain_member(make, member.seed)
    return adam_epochs(model, member.seed, member.lr, data, EPOCHS, N, BATCH)


def member_state(model: StackedUserModel, k: int) -> dict[str, torch.Tensor]:
    for group in model.groups:
        if k in group.members:
            i = group.members.index(k)
            params, buffers = group.state()
            return {name: t[i].detach() for name, t in {**params, **buffers}.items()}
    raise KeyError(k)


def check_against_plain(config, data, makers, *, expect_fallback: bool) -> None:
    trainer = Trainer(config, data)
    model = trainer.model
    assert bool(model.fallbacks) == expect_fallback, model.fallbacks
    assert all(g.stacked for g in model.groups) == (not expect_fallback)
    results = [trainer.train_epoch() for _ in range(EPOCHS)]
    for k, member in enumerate(trainer.members):
        plain, losses = train_plain(makers[member.activation], member, data)
        stacked_losses = [r.metrics[k]["train_loss"] for r in results]
        torch.testing.assert_close(stacked_losses, losses, rtol=1e-4, atol=1e-5)
        state = member_state(model, k)
        reference = {**dict(plain.named_parameters()), **dict(plain.named_buffers())}
        # fx may rename nothing: the swapped model keeps the user's parameter names.
        common = [n for n in reference if not n.startswith("actlab_act")]
        assert set(common) <= set(state), set(common) - set(state)
        for name in common:
            torch.testing.assert_close(
                state[name].float(), reference[name].detach().float(), rtol=1e-3, atol=2e-4,
                msg=lambda m, name=name, k=k: f"member {k} {name}: {m}",
            )  # fmt: skip
        plain.eval()
        with torch.no_grad():
            accuracy = (plain(data.x_test).argmax(1) == data.y_test).double().mean().item()
        assert results[-1].metrics[k]["test_acc"] == pytest.approx(accuracy, abs=1 / 16 + 1e-9)


def test_swapped_module_with_batchnorm_residual_dropout_matches_plain_models(nets):
    path, namespace = nets
    Net = namespace["Net"]
    config = ExperimentConfig(
        model=f"{path}:Net", swap=("relu",), activations=("relu", "gelu", "tanh"),
        seeds=(0, 1), lrs=(1e-3,), epochs=EPOCHS, batch_size=BATCH, diagnostics=False,
        stacking="vmap",
    )  # fmt: skip
    makers = {
        name: (lambda module=module, fn=fn: Net(module, fn))
        for name, (module, fn) in TORCH_ACTS.items()
    }
    check_against_plain(config, device_data(), makers, expect_fallback=False)


def test_builder_with_prelu_matches_plain_models(nets):
    path, namespace = nets
    build = namespace["build"]
    config = ExperimentConfig(
        model=f"{path}:build", activations=("prelu", "silu", "elu"), seeds=(0, 1),
        lrs=(1e-3, 3e-3), epochs=EPOCHS, batch_size=BATCH, diagnostics=False, select="final",
        stacking="vmap",
    )  # fmt: skip
    modules = {"prelu": nn.PReLU, "silu": nn.SiLU, "elu": nn.ELU}
    makers = {name: (lambda m=m: build(m)) for name, m in modules.items()}
    check_against_plain(config, device_data(), makers, expect_fallback=False)


def test_fallback_one_by_one_matches_plain_models_and_says_why(nets):
    path, namespace = nets
    branchy = namespace["branchy"]
    config = ExperimentConfig(
        model=f"{path}:branchy", activations=("relu", "gelu", "prelu"), seeds=(0, 1),
        epochs=EPOCHS, batch_size=BATCH, diagnostics=False, stacking="vmap",
    )  # fmt: skip
    modules = {"relu": nn.ReLU, "gelu": nn.GELU, "prelu": nn.PReLU}
    makers = {name: (lambda m=m: branchy(m)) for name, m in modules.items()}
    with pytest.warns(FallbackNotice, match="one by one.*vmap could not run"):
        check_against_plain(config, device_data(), makers, expect_fallback=True)


def test_a_shard_of_members_trains_like_the_same_members_in_the_whole_study(nets):
    """What decides a member (initial weights, batch order, dropout masks) depends on its
    seed alone: bit-identical in a shard. The trained numbers agree to float rounding only:
    vmap batches the members' GEMMs, whose blocking depends on how many members there are."""
    path, _ = nets
    config = ExperimentConfig(
        model=f"{path}:build", activations=("relu", "prelu"), seeds=(0, 1, 2),
        epochs=2, batch_size=BATCH, stacking="vmap",
    )  # fmt: skip
    data = device_data()
    whole = Trainer(config, data)
    members = members_for(config)
    shard = [members[1], members[4]]  # prelu|seed 0 and relu|seed 2
    alone = Trainer(config, data, members=shard)
    for i, k in enumerate((1, 4)):
        state, reference = member_state(alone.model, i), member_state(whole.model, k)
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[name], reference[name]) for name in state)
        mine, theirs = alone.model.dropout_generators(), whole.model.dropout_generators()
        assert torch.equal(mine[i].get_state(), theirs[k].get_state())
    assert [g.get_state().tolist() for g in alone.generators] == [
        whole.generators[0].get_state().tolist(), whole.generators[2].get_state().tolist()
    ]  # fmt: skip
    for _ in range(2):
        wanted, got = whole.train_epoch(), alone.train_epoch()
        rows = [row for row in wanted.metrics if row["member"] in (1, 4)]
        rows += [row for row in wanted.diagnostics if row["member"] in (1, 4)]
        for mine, theirs in zip(got.metrics + got.diagnostics, rows, strict=True):
            assert mine.keys() == theirs.keys()
            for key, value in theirs.items():
                if key != "epoch_time_s":
                    assert mine[key] == approx_number(value), key
    for i, k in enumerate((1, 4)):
        state, reference = member_state(alone.model, i), member_state(whole.model, k)
        for name in state:
            torch.testing.assert_close(state[name], reference[name], rtol=1e-5, atol=1e-6)


def test_auto_stacking_runs_convolutions_member_by_member_on_a_cpu(nets):
    path, _ = nets
    for name in ("build", "Net"):
        config = ExperimentConfig(seeds=(0,), model=f"{path}:{name}", activations=("relu", "gelu"))
        model = Trainer(config, device_data()).model
        assert [g.stacked for g in model.groups] == [False, False]
        assert model.fallbacks == []  # a choice, not a failure: nothing to report


def test_the_builtin_mlp_as_a_user_model_trains_like_the_builtin_path():
    """nn.Linear after torch.manual_seed(seed) is the built-in MLP's init ("pytorch"), and
    the batch order is the seed's: the two paths are the same training."""
    user = actlab.nn.user_model.from_object(
        lambda act: nn.Sequential(nn.Flatten(), nn.Linear(36, 16), act(), nn.Linear(16, 3))
    )
    options = dict(activations=("relu", "tanh"), seeds=(0, 1), epochs=3, batch_size=BATCH,
                   lrs=(3e-3,), diagnostics=False)  # fmt: skip
    data = device_data()
    mine = [r.metrics for r in train(ExperimentConfig(model=user.reference, **options), data)]
    builtin = [r.metrics for r in train(ExperimentConfig(hidden=(16,), **options), data)]
    for rows, reference in zip(mine, builtin, strict=True):
        for row, expected in zip(rows, reference, strict=True):
            for key in ("member", "activation", "seed", "train_loss", "test_loss", "test_acc"):
                assert row[key] == approx_number(expected[key]), key


def test_diagnostics_cover_every_weight_layer_and_every_swapped_activation(nets):
    path, _ = nets
    config = ExperimentConfig(
        model=f"{path}:Net", activations=("relu", "sigmoid"), seeds=(0,), epochs=1,
        batch_size=BATCH,
    )  # fmt: skip
    (result,) = list(train(config, device_data()))
    rows = [r for r in result.diagnostics if r["member"] == 0]
    # 4 weight layers (stem, block.conv1, block.conv2, head); 3 activation sites (act,
    # block.act, the F.relu call).
    assert [r["layer"] for r in rows] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 for r in rows)
    assert [r.get("dead_frac") is not None for r in rows] == [True, True, True, False]
    assert all(0 <= r["saturated_frac"] <= 1 for r in rows[:3])


def test_a_diverging_member_is_frozen_and_the_others_train_on():
    user = actlab.nn.user_model.from_object(
        lambda act: nn.Sequential(nn.Flatten(), nn.Linear(36, 16), act(), nn.Linear(16, 3))
    )
    config = ExperimentConfig(
        model=user.reference, activations=("relu", "tanh"), lrs=(1e-3, 1e4), seeds=(0,),
        optimizer="sgd", epochs=3, batch_size=BATCH, select="final",
    )  # fmt: skip
    trainer = Trainer(config, device_data())
    results = [trainer.train_epoch()]
    frozen = {name: t.clone() for name, t in member_state(trainer.model, 1).items()}
    results += [trainer.train_epoch() for _ in range(2)]
    status = {
        (r["activation"], r["lr"], r["epoch"]): r["status"] for x in results for r in x.metrics
    }
    assert status[("relu", 1e4, 1)] == "diverged" and ("relu", 1e4, 2) not in status
    assert all(status[(a, 1e-3, e)] == "ok" for a in ("relu", "tanh") for e in (1, 2, 3))
    after = member_state(trainer.model, 1)  # relu|lr=1e4 does not move once frozen
    assert all(torch.equal(after[name], frozen[name]) for name in frozen if "running" not in name)
    assert all(r["train_loss"] < 2 for x in results for r in x.metrics if r["lr"] == 1e-3)


@pytest.mark.parametrize("reference", ["Net", "build", "branchy", "Tied"])
def test_each_members_backward_after_its_forward_equals_one_backward_of_the_sum(
    nets, monkeypatch, reference
):
    """Members that run on their own (a CPU's --stacking auto/loop, a fallback) back-propagate
    one by one, right after their own forward (as K plain loops do: one member's saved
    activations at a time). Their gradients are those of one backward of the summed losses:
    the same parameters, BatchNorm statistics and metrics, bit for bit, with dropout, random
    ops in the one-by-one path, a tied weight, and a member that diverges (SGD at lr 1e4)
    frozen on the way."""
    path, _ = nets
    config = ExperimentConfig(
        model=f"{path}:{reference}", activations=("relu", "tanh"), lrs=(1e-2, 1e4),
        seeds=(0, 1), optimizer="sgd", epochs=3, batch_size=BATCH, stacking="loop",
        diagnostics=False,
    )  # fmt: skip
    runs = []
    for by_member in (True, False):
        if not by_member:  # the step before: every forward, then one backward of the sum
            monkeypatch.setattr(StackedUserModel, "member_by_member", False)
        trainer = Trainer(config, device_data())
        assert trainer.model.member_by_member is by_member
        rows = [r for _ in range(3) for r in trainer.train_epoch().metrics]
        runs.append(([{**r, "epoch_time_s": None} for r in rows], trainer.state()))
    (mine, state), (summed, reference_state) = runs
    assert mine == summed and any(r["status"] == "diverged" for r in mine)
    for name, tensor in reference_state["model"].items():
        assert torch.equal(state["model"][name], tensor), name
