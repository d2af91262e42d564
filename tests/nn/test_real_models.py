"""Real architectures, written with torch alone (no torchvision or timm): a TransformerEncoder
with string and module activations (batch_first and not), a CNN with squeeze-excitation
gates, a timm-style builder calling ``act_layer(inplace=True)``, and a ViT-style block with
nn.MultiheadAttention. For each:

- what runs after the swap, counted by aten op (a TorchDispatchMode sees every op a forward
  executes, inside torch's own layers and fused kernels too) in train mode and in eval mode
  under no_grad, where torch's fused inference paths would bring the old activation back;
- a 100-step oracle: the stacked members against plain nn.Module + torch.optim.Adam models
  trained one by one on the same batches;
- a short study with diagnostics on (marked slow), which must keep every trained epoch.
"""

from __future__ import annotations

import textwrap
import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from fixtures.engine import adam_epochs
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from actlab.config import ExperimentConfig
from actlab.engine.batches import DeviceData
from actlab.engine.trainer import Trainer
from actlab.errors import ModelNotice
from actlab.nn.swap import InPlace
from actlab.nn.user_model import build_member, load, swap
from actlab.study import store
from actlab.study.driver import run_study

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH, EPOCHS = 40, 8, 20  # 5 steps an epoch: 100 steps
CLASSES = 3

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Encoder(nn.Module):
        '''A 6x6 image as 6 tokens of 6 features through a 2-layer TransformerEncoder.'''

        def __init__(self, activation="relu", batch_first=True):
            super().__init__()
            self.batch_first = batch_first
            self.embed = nn.Linear(6, 8)
            layer = nn.TransformerEncoderLayer(
                8, 2, 16, dropout=0.0, activation=activation, batch_first=batch_first
            )
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.embed(x.flatten(1, 2))
            if not self.batch_first:
                tokens = tokens.transpose(0, 1)
            h = self.encoder(tokens)
            return self.head(h.mean(dim=1 if self.batch_first else 0))


    def encoder_string():
        return Encoder("relu", batch_first=True)


    def encoder_module():
        return Encoder(nn.ReLU(), batch_first=True)


    def encoder_string_seq_first():
        return Encoder("relu", batch_first=False)


    def encoder_module_seq_first():
        return Encoder(nn.ReLU(), batch_first=False)


    class SE(nn.Module):
        '''Squeeze-excitation: a ReLU between its 1x1 convs, a gate on the channels.'''

        def __init__(self, channels, gate):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(channels, channels // 2, 1)
            self.act = nn.ReLU()
            self.expand = nn.Conv2d(channels // 2, channels, 1)
            self.gate = gate()

        def forward(self, x):
            return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


    class SENet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.act = nn.ReLU(inplace=True)
            self.se1 = SE(4, nn.Sigmoid)
            self.se2 = SE(4, nn.Hardsigmoid)
            self.head = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            x = self.se2(self.se1(self.act(self.bn(self.stem(x)))))
            return self.head(x.flatten(1))


    class TimmBlock(nn.Module):
        def __init__(self, channels, act_layer):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(channels)
            self.act = act_layer(inplace=True)

        def forward(self, x):
            shortcut = x
            x = self.act(self.bn(self.conv(x)))
            return x + shortcut


    def timm_net(act_layer):
        '''timm's convention: the builder calls act_layer(inplace=True).'''
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
            act_layer(inplace=True), TimmBlock(4, act_layer), nn.Flatten(), nn.Linear(144, 3),
        )


    def timm_net_partial(act_layer):
        '''An SE block whose ReLU is written in: act_layer does not reach it.'''
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
            act_layer(inplace=True), SE(4, nn.Sigmoid), nn.Flatten(), nn.Linear(144, 3),
        )


    class ViT(nn.Module):
        '''2x2 patches (9 tokens), a class token, one pre-norm attention + MLP block.'''

        def __init__(self, act=nn.GELU):
            super().__init__()
            self.patch = nn.Linear(4, 8)
            self.cls = nn.Parameter(torch.zeros(1, 1, 8))
            self.pos = nn.Parameter(0.02 * torch.randn(1, 10, 8))
            self.norm1 = nn.LayerNorm(8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.norm2 = nn.LayerNorm(8)
            self.mlp = nn.Sequential(nn.Linear(8, 16), act(), nn.Linear(16, 8))
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            b = x.shape[0]
            patches = x.reshape(b, 3, 2, 3, 2).permute(0, 1, 3, 2, 4).reshape(b, 9, 4)
            h = torch.cat([self.cls.expand(b, -1, -1), self.patch(patches)], dim=1) + self.pos
            q = self.norm1(h)
            h = h + self.attn(q, q, q, need_weights=False)[0]
            h = h + self.mlp(self.norm2(h))
            return self.head(self.norm(h)[:, 0])


    def vit(act):
        return ViT(act)
    """
)

ENCODERS = ("encoder_string", "encoder_module", "encoder_string_seq_first",
            "encoder_module_seq_first")  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "real_models.py"
    path.write_text(MODELS)
    return path, load(f"{path}:vit").factory.__globals__


def device_data() -> DeviceData:
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(N, 1, 6, 6, generator=generator)
    y = torch.randint(0, CLASSES, (N,), generator=generator)
    empty = torch.zeros(0, 1, 6, 6)
    return DeviceData(
        x, y, empty, torch.zeros(0, dtype=torch.long), x[:16], y[:16], CLASSES, (1, 6, 6)
    )


class AtenCounter(TorchDispatchMode):
    """Counts every aten op executed, by overload packet name (relu, gelu, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def aten_counts(model: nn.Module, x: torch.Tensor, *, training: bool) -> Counter[str]:
    model.train(training)
    with torch.set_grad_enabled(training), AtenCounter() as counter:
        model(x)
    return counter.counts


RELU_OPS = ("relu", "relu_", "threshold", "_transformer_encoder_layer_fwd")


# === swap counts by aten op ==============================================================


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("training", [True, False])
def test_transformer_encoder_runs_the_new_activation_in_train_and_eval_no_grad(
    models, name, training
):
    """Before: activation="relu" was not seen (nothing to swap), and with activation=
    nn.ReLU() the swapped layer kept its fast-path flag, so eval under no_grad ran ReLU
    inside torch's fused encoder kernel."""
    _, namespace = models
    swapped, report = swap(namespace[name](), "silu")
    assert report.count == 2, report.summary()
    counts = aten_counts(swapped, device_data().x_train[:4], training=training)
    assert counts["silu"] == 2  # one per layer
    assert sum(counts[op] for op in RELU_OPS) == 0, counts


def test_transformer_layer_swap_is_reported_by_its_activation_argument(models):
    _, namespace = models
    _, report = swap(namespace["encoder_string"](), "gelu")
    assert report.counts() == {"TransformerEncoderLayer(activation='relu')": 2}
    _, report = swap(namespace["encoder_module"](), "gelu")
    assert report.counts() == {"nn.ReLU": 2}


@pytest.mark.parametrize("training", [True, False])
def test_se_gates_are_left_alone_and_said(models, training):
    _, namespace = models
    swapped, report = swap(namespace["SENet"](), "gelu")
    assert report.counts() == {"nn.ReLU": 3}  # stem and the two SE blocks
    assert sorted(kind for _, kind, _ in report.left) == ["nn.Hardsigmoid", "nn.Sigmoid"]
    assert "left alone (gates and squashing outputs are kept unless named)" in report.summary()
    counts = aten_counts(swapped, device_data().x_train[:4], training=training)
    assert counts["gelu"] == 3 and counts["relu"] + counts["relu_"] == 0
    assert counts["sigmoid"] == 1 and counts["hardsigmoid"] == 1
    # the stem's nn.ReLU(inplace=True) stays in place: gelu has no in-place variant
    assert isinstance(swapped.act, InPlace) and isinstance(swapped.act.inner, nn.GELU)


@pytest.mark.parametrize("training", [True, False])
def test_timm_style_builder_gets_in_place_activations(models, training):
    path, namespace = models
    model, report = build_member(load(f"{path}:timm_net"), "silu", 0)
    assert [kind for _, kind in report.modules] == ["act()", "act()"]
    assert all(getattr(model.get_submodule(p), "inplace", False) for p in report.sites)
    counts = aten_counts(model, device_data().x_train[:4], training=training)
    assert counts["silu_"] == 2 and counts["relu"] + counts["relu_"] == 0
    # act(inplace=True) for an activation without an in-place variant: still in place
    model, report = build_member(load(f"{path}:timm_net"), "gelu", 0)
    x = torch.randn(2, 4, 3, 3)
    act = model.get_submodule(report.sites[0])
    expected = F.gelu(x)
    assert act(x) is x and torch.equal(x, expected)


@pytest.mark.parametrize("training", [True, False])
def test_vit_block_swap(models, training):
    _, namespace = models
    swapped, report = swap(namespace["ViT"](), "silu")
    assert report.counts() == {"nn.GELU": 1}
    counts = aten_counts(swapped, device_data().x_train[:4], training=training)
    assert counts["silu"] == 1 and counts["gelu"] == 0


@pytest.mark.parametrize(
    ("reference", "activation"),
    [("encoder_string", "gelu"), ("encoder_module_seq_first", "silu"), ("SENet", "silu"),
     ("timm_net", "gelu"), ("vit", "silu")],
)  # fmt: skip
def test_the_stacked_model_runs_only_the_new_activation(models, reference, activation):
    """In actlab's own training step and evaluation (vmapped), counted by aten op."""
    path, _ = models
    config = ExperimentConfig(
        model=f"{path}:{reference}", activations=(activation,), seeds=(0, 1),
        batch_size=BATCH, stacking="vmap", diagnostics=False,
    )  # fmt: skip
    data = device_data()
    trainer = Trainer(config, data)
    assert trainer.model.fallbacks == []
    with AtenCounter() as counter:
        trainer.timing_step()
        trainer.evaluate(data.x_test, data.y_test)
    counts = counter.counts
    assert counts[activation] + counts[activation + "_"] > 0
    assert sum(counts[op] for op in RELU_OPS) == 0, counts
    assert counts["_native_multi_head_attention"] == 0


def test_a_builder_whose_act_misses_an_activation_is_told_which(models):
    path, _ = models
    config = ExperimentConfig(
        model=f"{path}:timm_net_partial", activations=("gelu",), seeds=(0,), batch_size=BATCH
    )
    notice = (
        r"act\(\) did not reach every activation.*counted in a forward pass\): relu x1 \(3\.act\)"
    )
    with pytest.warns(ModelNotice, match=notice):
        trainer = Trainer(config, device_data())
    assert trainer.model.swap_reports["gelu"].remaining == [("relu", "3.act", 1)]


# === 100-step oracles ====================================================================


def plain_losses(make, seed: int, lr: float, data: DeviceData) -> tuple[nn.Module, list[float]]:
    """One member alone: built after manual_seed(seed), Adam, its seed's batch order."""
    torch.manual_seed(seed)
    model = make()
    return adam_epochs(model, seed, lr, data, EPOCHS, N, BATCH)


def check_oracle(reference: str, activations: dict, models, *, stacking: str = "vmap") -> None:
    """Per-epoch train loss and final test accuracy of every member against its plain
    model: the same math, summed in another order (vmap batches the members' GEMMs), so
    float rounding apart (rtol 1e-4 over 100 Adam steps)."""
    path, _ = models
    config = ExperimentConfig(
        model=f"{path}:{reference}", activations=tuple(activations), seeds=(0, 1),
        lrs=(3e-3,), epochs=EPOCHS, batch_size=BATCH, diagnostics=False, stacking=stacking,
    )  # fmt: skip
    data = device_data()
    trainer = Trainer(config, data)
    assert trainer.model.fallbacks == []
    results = [trainer.train_epoch() for _ in range(EPOCHS)]
    for k, member in enumerate(trainer.members):
        plain, losses = plain_losses(activations[member.activation], member.seed, member.lr, data)
        stacked = [r.metrics[k]["train_loss"] for r in results]
        torch.testing.assert_close(stacked, losses, rtol=1e-4, atol=1e-5)
        plain.eval()
        with torch.no_grad():
            accuracy = (plain(data.x_test).argmax(1) == data.y_test).double().mean().item()
        assert results[-1].metrics[k]["test_acc"] == pytest.approx(accuracy, abs=1 / 16 + 1e-9)


@pytest.mark.parametrize(("name", "batch_first"), [("encoder_string", True),
                         ("encoder_module_seq_first", False)])  # fmt: skip
def test_transformer_encoder_matches_plain_models(models, name, batch_first):
    _, namespace = models
    Encoder = namespace["Encoder"]
    activations = {
        "relu": lambda: Encoder("relu", batch_first),
        "gelu": lambda: Encoder("gelu", batch_first),
    }
    check_oracle(name, activations, models)


def test_se_net_matches_plain_models(models):
    _, namespace = models

    def se_net(act):
        def make():
            net = namespace["SENet"]()
            net.act, net.se1.act, net.se2.act = act(), act(), act()
            return net

        return make

    check_oracle("SENet", {"relu": se_net(nn.ReLU), "silu": se_net(nn.SiLU)}, models)


def test_timm_style_builder_matches_plain_models(models):
    _, namespace = models
    timm_net = namespace["timm_net"]
    activations = {"relu": lambda: timm_net(nn.ReLU), "silu": lambda: timm_net(nn.SiLU)}
    check_oracle("timm_net", activations, models)


@pytest.mark.parametrize("stacking", ["vmap", "loop"])
def test_vit_block_matches_plain_models(models, stacking):
    _, namespace = models
    vit = namespace["vit"]
    activations = {"gelu": lambda: vit(nn.GELU), "relu": lambda: vit(nn.ReLU)}
    check_oracle("vit", activations, models, stacking=stacking)


def test_attention_under_vmap_takes_no_batching_fallback(models):
    """vmap of nn.MultiheadAttention on a CPU: torch's flash SDPA kernel has no batching
    rule, and vmap would run it member by member through its slow fallback ("There is a
    performance drop because we have not yet implemented the batching rule for
    aten::_scaled_dot_product_flash_attention_for_cpu"). A training step and an evaluation
    of the stacked ViT, every warning recorded (set_warn_always: torch warns once per
    process otherwise, and an earlier test may have spent it)."""
    path, _ = models
    config = ExperimentConfig(model=f"{path}:vit", activations=("gelu", "relu"), seeds=(0, 1),
                              batch_size=BATCH, diagnostics=True, stacking="vmap")  # fmt: skip
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = Trainer(config, device_data())
            trainer.train_epoch()
    finally:
        torch.set_warn_always(before)
    assert all(group.stacked for group in trainer.model.groups)  # vmap really ran
    drops = [str(w.message) for w in caught if "performance drop" in str(w.message)]
    assert drops == []


# === short studies with diagnostics ======================================================


@pytest.mark.slow
@pytest.mark.parametrize(
    "reference", ["encoder_string", "encoder_module_seq_first", "SENet", "timm_net", "vit"]
)
@pytest.mark.parametrize("stacking", ["vmap", "auto"])
def test_a_short_study_with_diagnostics_keeps_every_epoch(models, tmp_path, reference, stacking):
    """Before: attention's eval fast path inside vmap had no derivative, the probe died and
    the trained epoch was lost."""
    path, _ = models
    config = ExperimentConfig(
        model=f"{path}:{reference}", dataset="tensors", activations=("relu", "silu"),
        seeds=(0, 1), epochs=2, batch_size=BATCH, stacking=stacking, diagnostics=True,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback, no "performance drop"
        warnings.simplefilter("ignore", ModelNotice)
        result = run_study(config, dataset=_dataset(), out=tmp_path / "run")
    metrics = result.metrics
    assert len(metrics) == 2 * 4 and (metrics["status"] == "ok").all()
    diagnostics = store.read_run(tmp_path / "run").diagnostics
    assert set(diagnostics["epoch"]) == {1, 2}
    assert diagnostics["dead_frac"].notna().any() and diagnostics["probe_grad_norm"].notna().all()


def _dataset():
    from actlab.data.splits import from_tensors

    data = device_data()
    return from_tensors(data.x_train, data.y_train, data.x_test, data.y_test)


def test_transformer_decoder_layer_activation_is_swapped(models):
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, activation="gelu",
                                                    batch_first=True)  # fmt: skip
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.layer(x, x).mean(1))

    swapped, report = swap(Decoder(), "relu")
    assert report.counts() == {"TransformerDecoderLayer(activation='gelu')": 1}
    counts = aten_counts(swapped, torch.randn(2, 5, 8), training=True)
    assert counts["relu"] == 1 and counts["gelu"] == 0


def test_swap_activations_with_an_example_says_what_still_runs(capsys):
    class Hidden(nn.Module):  # a relu no swap can reach: called through torch.ops
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return torch.ops.aten.relu(self.act(self.fc(x)))

    actlab_swap = __import__("actlab").swap_activations
    actlab_swap(Hidden(), "gelu", example=torch.randn(2, 4))
    line = capsys.readouterr().out
    assert "replaced 1 activation(s) by gelu: nn.ReLU x1 (act)" in line
    assert "still running after the swap (counted in a forward pass): relu x1 (forward)" in line
