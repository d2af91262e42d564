"""A user's builder with gated feed-forwards (swiglu, geglu) beside plain ones (relu, gelu):

- ``act`` says whether the activation is gated (``act.gated``) and how wide to build
  (``act.hidden(n)``: 2/3 of n, rounded, when gated; ``act.inputs(h)``: 2h when gated);
- the members of one study then have different parameter shapes, and still train in one
  study: a 60-step oracle against K plain nn.Module copies + torch.optim.Adam trained one
  by one on the same batches (per-epoch losses and final weights), vmapped and one by one;
- a checkpoint of such a study resumes exactly;
- the parameter counts are printed, equal within the rounding of the 2/3 rule;
- a builder that ignores ``act.gated`` gets one line that says how to size the layer;
- a gated unit's dead/saturated units are those of its gate, on b of [a, b].
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from fixtures.cli import run_cli
from fixtures.engine import adam_epochs

from actlab.config import ExperimentConfig
from actlab.engine.trainer import DeviceData, Trainer
from actlab.errors import ConfigError
from actlab.nn.user_model import build_member, load, parameter_line

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH, EPOCHS = 40, 8, 12  # 5 steps an epoch: 60 steps
CLASSES, D = 3, 8
ACTIVATIONS = ("relu", "gelu", "swiglu", "geglu")

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Block(nn.Module):
        '''A pre-norm transformer block whose FFN every activation fits.'''

        def __init__(self, act, d=8, heads=2):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.ln2 = nn.LayerNorm(d)
            h = act.hidden(4 * d)
            self.ffn = nn.Sequential(nn.Linear(d, act.inputs(h)), act(), nn.Linear(h, d))

        def forward(self, x):
            a = self.ln1(x)
            x = x + self.attn(a, a, a, need_weights=False)[0]
            return x + self.ffn(self.ln2(x))


    class Net(nn.Module):
        '''A 6x6 image as 6 tokens of 6 features, one block, mean-pooled.'''

        def __init__(self, act, classes=3):
            super().__init__()
            self.embed = nn.Linear(6, 8)
            self.block = Block(act)
            self.head = nn.Linear(8, classes)

        def forward(self, x):
            return self.head(self.block(self.embed(x.flatten(1, 2))).mean(1))


    def transformer(act):
        return Net(act)


    def digits_transformer(act):
        net = Net(act, classes=10)
        net.embed = nn.Linear(8, 8)
        return net


    def mlp(act):
        h = act.hidden(24)
        return nn.Sequential(nn.Flatten(), nn.Linear(36, act.inputs(h)), act(), nn.Linear(h, 3))


    def full_width(act):  # gated at the plain width: 3/2 of the FFN's parameters
        return nn.Sequential(nn.Flatten(), nn.Linear(64, act.inputs(32)), act(), nn.Linear(32, 10))


    def ignores_gated(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act(), nn.Linear(32, 10))


    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)
    """
)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    file = tmp_path_factory.mktemp("gated") / "gated_models.py"
    file.write_text(MODELS)
    return file


def device_data() -> DeviceData:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(N, 1, 6, 6, generator=generator)
    y = torch.randint(0, CLASSES, (N,), generator=generator)
    empty = torch.zeros(0, 1, 6, 6)
    return DeviceData(
        x, y, empty, torch.zeros(0, dtype=torch.long), x[:16], y[:16], CLASSES, (1, 6, 6)
    )


def config(path, name: str, **changes) -> ExperimentConfig:
    values = dict(
        model=f"{path}:{name}", activations=ACTIVATIONS, seeds=(0, 1), lrs=(3e-3,),
        epochs=EPOCHS, batch_size=BATCH, diagnostics=False, stacking="vmap",
    )  # fmt: skip
    values.update(changes)
    return ExperimentConfig(**values)


# === what act says =======================================================================


def test_act_says_gated_and_the_width_at_equal_parameters(path):
    user = load(f"{path}:mlp")
    seen = {}

    def spy(act):
        seen[act.name] = (act.gated, act.hidden(96), act.inputs(10))
        return user.factory(act)

    spy_user = type(user)(user.reference, spy, user.kind, user.source, user.sha256)
    for activation in ("relu", "swiglu", "reglu", "relu2"):
        build_member(spy_user, activation, 0)
    assert seen == {
        "relu": (False, 96, 10),
        "swiglu": (True, 64, 20),  # 3 d 64 = 2 d 96
        "reglu": (True, 64, 20),
        "relu2": (False, 96, 10),
    }
    model, _ = build_member(user, "swiglu", 0)
    assert model(torch.rand(5, 1, 6, 6)).shape == (5, 3)
    assert model[2](torch.rand(5, 32)).shape == (5, 16)  # [a, b] (2h) -> a * silu(b) (h)


def test_parameter_counts_are_printed_and_equal_within_the_rounding(path):
    line = parameter_line(load(f"{path}:transformer"), ACTIVATIONS)
    counts = {}
    for part in line.removeprefix("parameters per member: ").split(", "):
        name, count = part.split()[:2]
        counts[name] = int(count.replace(",", ""))
    assert set(counts) == set(ACTIVATIONS) and "differ" not in line
    assert counts["relu"] == counts["gelu"] and counts["swiglu"] == counts["geglu"]
    # 4d = 32 plain units; 21 gated ones (2/3 of 32 rounded): one unit costs 3d + 2.
    assert abs(counts["swiglu"] - counts["relu"]) <= 3 * D + 2
    assert "(gated)" in line.split("swiglu")[1].split(",")[0]


def test_unequal_parameter_counts_are_said(path):
    line = parameter_line(load(f"{path}:full_width"), ("relu", "swiglu"))
    assert "differ by" in line and "act.hidden" in line


# === training: the oracle ================================================================


def plain_run(path, activation: str, seed: int, lr: float, data: DeviceData):
    """One member alone: built after manual_seed(seed), Adam, its seed's batch order."""
    model, _ = build_member(load(f"{path}:transformer"), activation, seed)
    return adam_epochs(model, seed, lr, data, EPOCHS, N, BATCH)


def member_weights(trainer: Trainer, k: int) -> dict[str, torch.Tensor]:
    for group in trainer.model.groups:
        if k in group.members:
            i = group.members.index(k)
            return {n: p[i].detach() for n, p in zip(group.param_names, group.params, strict=True)}
    raise KeyError(k)


@pytest.mark.parametrize("stacking", ["vmap", "loop"])
def test_gated_and_plain_members_match_plain_models(path, stacking):
    """Before: members of different widths could not be joined (a cat of their
    activation inputs) and the study died before its first step. The same math summed in
    another order (vmap batches the members' GEMMs): rtol 1e-4 over 60 Adam steps."""
    data = device_data()
    trainer = Trainer(config(path, "transformer", stacking=stacking), data)
    assert trainer.model.fallbacks == []
    shapes = {g.activation: g.params[g.param_names.index("block.ffn.0.weight")].shape[1:]
              for g in trainer.model.groups}  # fmt: skip
    assert shapes == {"relu": (32, 8), "gelu": (32, 8), "swiglu": (42, 8), "geglu": (42, 8)}
    results = [trainer.train_epoch() for _ in range(EPOCHS)]
    for k, member in enumerate(trainer.members):
        plain, losses = plain_run(path, member.activation, member.seed, member.lr, data)
        stacked = [r.metrics[k]["train_loss"] for r in results]
        torch.testing.assert_close(stacked, losses, rtol=1e-4, atol=1e-5)
        weights = member_weights(trainer, k)
        for name, value in plain.named_parameters():
            mine, theirs = weights[name], value.detach()
            if name == "block.attn.in_proj_bias":
                # The key bias gets no gradient but rounding noise (softmax over keys is
                # invariant to q . b_k), which Adam scales up to steps of +-lr: left out.
                mine, theirs = (
                    torch.cat([mine[:D], mine[2 * D :]]),
                    torch.cat([theirs[:D], theirs[2 * D :]]),
                )
            torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-4, msg=f"{k} {name}")


def test_a_checkpoint_of_members_of_different_widths_resumes_exactly(path):
    data = device_data()
    cfg = config(path, "mlp", epochs=2, diagnostics=True)
    straight = Trainer(cfg, data)
    first = straight.train_epoch()
    second = straight.train_epoch()
    state = straight.state()
    resumed = Trainer(cfg, data)
    resumed.train_epoch()
    fresh = Trainer(cfg, data)
    fresh.load_state(resumed.state())
    again = fresh.train_epoch()
    timeless = [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in again.metrics]
    assert timeless == [
        {k: v for k, v in row.items() if k != "epoch_time_s"} for row in second.metrics
    ]
    assert first.metrics[0]["train_loss"] != second.metrics[0]["train_loss"]
    assert again.diagnostics == second.diagnostics
    for name, value in fresh.model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name


# === diagnostics of a gated unit ==========================================================


def test_a_gated_unit_is_dead_where_its_gate_is(path):
    """reglu = a * relu(b): a unit is dead when b <= 0 for every probe sample; its
    moments are b's. Checked against member 0's own forward, computed by hand."""
    data = device_data()
    trainer = Trainer(config(path, "mlp", activations=("relu", "reglu"), seeds=(0,)), data)
    with torch.no_grad():  # make some gates dead: b's bias very negative for 5 units
        group = trainer.model.groups[1]
        bias = group.params[group.param_names.index("1.bias")]
        bias[0, 16 + 3 : 16 + 8] = -100.0
    x, y = data.x_train[:16], data.y_train[:16]
    out = trainer.model.probe(x, y)
    member, _ = build_member(load(f"{path}:mlp"), "reglu", 0)
    member.load_state_dict(member_weights(trainer, 1))
    z = member[1](member[0](x)).detach()
    b = z[:, 16:]
    assert out["dead_frac"][1, 0].item() == pytest.approx((b <= 0).all(0).float().mean().item())
    assert out["dead_frac"][1, 0].item() >= 5 / 16
    torch.testing.assert_close(out["preact_mean"][1, 0], b.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["preact_std"][1, 0], b.std(correction=0), rtol=1e-5, atol=1e-6)


# === bad input ===========================================================================


def test_a_builder_that_ignores_act_gated_gets_one_line(path):
    with pytest.raises(ConfigError, match=r"swiglu is a gated unit: act\(\) takes \[a, b\]") as e:
        Trainer(config(path, "ignores_gated", activations=("relu", "swiglu")), _digits_like())
    assert "act.inputs(h)" in str(e.value) and "\n" not in str(e.value)


def test_a_gated_activation_swapped_into_a_module_gets_one_line(path):
    with pytest.raises(ConfigError, match="cannot be swapped into a network built for"):
        Trainer(config(path, "Plain", activations=("relu", "geglu")), _digits_like())


def _digits_like() -> DeviceData:
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 10
    empty = torch.zeros(0, 1, 8, 8)
    return DeviceData(x, y, empty, torch.zeros(0, dtype=torch.long), x, y, 10, (1, 8, 8))


@pytest.mark.slow
def test_the_cli_prints_parameter_counts_and_refuses_a_wrong_width_in_one_line(path, tmp_path):
    common = ("--dataset", "digits", "--seeds", "1", "--epochs", "1", "--quiet")
    code, out, err = run_cli(
        "compare", "--model", f"{path}:digits_transformer", "--activations", "relu,swiglu",
        "--out", tmp_path / "ok", *common,
    )  # fmt: skip
    assert code == 0, err
    assert "parameters per member: relu " in out and "swiglu" in out and "(gated)" in out
    code, out, err = run_cli(
        "compare", "--model", f"{path}:ignores_gated", "--activations", "relu,swiglu",
        "--out", tmp_path / "bad", *common,
    )  # fmt: skip
    assert code != 0 and "Traceback" not in err
    assert "swiglu is a gated unit" in err and len(err.strip().splitlines()) == 1


def test_a_study_is_sized_by_its_largest_member_over_activations(path, monkeypatch):
    """full_width: swiglu's member has 4,490 parameters, relu's (the first) 2,410. Before:
    the study was sized from the first activation's member alone and admitted."""
    from actlab.engine import memory

    per_member = 4 * 4 * 4490  # weights, gradients, Adam's two moments (float32)
    free = (2 * per_member * 0.95) / 0.8  # room for two relu members, not for two swiglu
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    with pytest.raises(ConfigError, match="the 2 members of .* need about"):
        Trainer(config(path, "full_width", activations=("relu", "swiglu"), seeds=(0,)),
                _digits_like())  # fmt: skip
