"""Diagnostics of a --net gpt study (actlab.engine.lm_diagnostics) against autograd on plain
GPT copies of the members: per-layer gradient norms on the probe batch and over training
steps (before clipping), dead/saturated units and moments of each block's FFN activation
input (a gated unit's: its gate's, on b), a probe independent of the member count, and
the rows, the run directory and the report of a study."""

import random

import pytest
import torch
import torch.nn.functional as F
from fixtures.cli import run_cli

from actlab.catalog import registry as catalog
from actlab.config import ExperimentConfig, members_for
from actlab.data import text
from actlab.engine import diagnostics as diagnostics_lib
from actlab.engine import lm_diagnostics
from actlab.engine.lm_trainer import LMTrainer, random_windows
from actlab.study import store

pytestmark = pytest.mark.usefixtures("one_thread")

ACTIVATIONS = ("relu", "swiglu", "gelu")


@pytest.fixture
def corpus(tmp_path):
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    picks = random.Random(0).choices(words, k=3000)
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(picks), encoding="utf-8")
    return path


def lm_config(corpus, **changes) -> ExperimentConfig:
    values = dict(
        dataset=f"text:{corpus}", model="gpt", activations=ACTIVATIONS, seeds=(0, 1),
        width=16, layers=2, heads=2, context=12, batch_size=4, epochs=1, diagnostics=True,
        device="cpu",
    )  # fmt: skip
    values.update(changes)
    return ExperimentConfig(**values)


def trainer(corpus, **changes) -> LMTrainer:
    config = lm_config(corpus, **changes)
    dataset = text.load_text(config.dataset, context=config.context, val_size=0.1)
    return LMTrainer(config, dataset)


def plain_grad_norms(plain, x, y) -> list[float]:
    """Autograd on the plain GPT: each layer's weight-gradient norm of the mean token CE."""
    plain.zero_grad()
    logits = plain(x)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    params = dict(plain.named_parameters())
    return [params[n].grad.norm().item() for n in lm_diagnostics.weight_names(len(plain.blocks))]


def ffn_inputs(plain, x) -> list[torch.Tensor]:
    """Each block's FFN activation input (B, T, width), captured in the plain GPT."""
    captured = []
    hooks = [b.ffn.act.register_forward_pre_hook(lambda _m, a: captured.append(a[0].detach()))
             for b in plain.blocks]  # fmt: skip
    with torch.no_grad():
        plain(x)
    for hook in hooks:
        hook.remove()
    return captured


def by_hand(activation: str, z: torch.Tensor) -> tuple[float, float, float, float]:
    """Dead and saturated fractions of the units (last dim) over every window and
    position, and the moments, written out: a gated unit's on b with its gate."""
    if activation == "swiglu":
        z, name = z.chunk(2, dim=-1)[1], "silu"
    else:
        name = activation
    values = z.reshape(-1, z.shape[-1]).clone().requires_grad_(True)
    f = catalog.get(name)
    out = f(values)
    (slope,) = torch.autograd.grad(out.sum(), values)
    dead = ((out == 0).all(0) | (slope.abs() < diagnostics_lib.DEAD_EPS).all(0)).float().mean()
    threshold = diagnostics_lib.SATURATION * diagnostics_lib.max_slope(f)
    saturated = ((slope.abs() < threshold).float().mean(0) > diagnostics_lib.MOST).float().mean()
    return dead.item(), saturated.item(), z.mean().item(), z.std(correction=0).item()


def test_the_probe_matches_autograd_and_hand_counts_on_plain_gpts(corpus):
    t = trainer(corpus)
    model = t.model
    with torch.no_grad():  # dead units to find: 5 relu units, 4 swiglu gates forced off
        model.ffn[0]["blocks__0__ffn__fc1__bias"][0, 3:8] = -50.0
        width = model.ffn[1]["blocks__1__ffn__fc1__bias"].shape[1] // 2
        model.ffn[1]["blocks__1__ffn__fc1__bias"][1, width + 2 : width + 6] = -50.0
    x, y = lm_diagnostics.probe_windows(t.data.train_tokens, 12)
    assert x.shape == (lm_diagnostics.PROBE_WINDOWS, 12)
    measured = lm_diagnostics.probe(model, x, y, [True] * model.num_members)
    dead_seen = 0
    for k, member in enumerate(t.members):
        plain = model.export_member(k)
        expected = plain_grad_norms(plain, x, y)
        torch.testing.assert_close(measured["probe_grad_norm"][k].tolist(), expected, rtol=1e-4,
                                   atol=1e-7)  # fmt: skip
        for b, z in enumerate(ffn_inputs(plain, x)):
            dead, saturated, mean, std = by_hand(member.activation, z)
            assert measured["dead_frac"][k, b].item() == pytest.approx(dead), (k, b)
            assert measured["saturated_frac"][k, b].item() == pytest.approx(saturated), (k, b)
            assert measured["preact_mean"][k, b].item() == pytest.approx(mean, rel=1e-4, abs=1e-6)
            assert measured["preact_std"][k, b].item() == pytest.approx(std, rel=1e-4)
            dead_seen += dead > 0
    assert measured["dead_frac"][0, 0] >= 5 / 64 and measured["dead_frac"][4, 1] >= 4 / 43
    assert dead_seen >= 2
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradient


def test_training_gradient_norms_are_the_mean_over_steps_before_clipping(corpus):
    t = trainer(corpus, clip=0.01)  # clipping changes the gradients, not what is measured
    generator = torch.Generator().manual_seed(5)
    expected = []
    for _ in range(3):
        x, y = random_windows(t.data.train_tokens, [generator] * len(t.seeds), 4, 12)
        step = []
        for k, member in enumerate(t.members):
            plain = t.model.export_member(k)
            s = t.seeds.index(member.seed)
            step.append(plain_grad_norms(plain, x[s], y[s]))
        expected.append(torch.tensor(step))
        t.step(x, y)
    mean = t.gradient_sums.mean_and_reset()
    torch.testing.assert_close(mean, torch.stack(expected).mean(0), rtol=1e-4, atol=1e-7)


def test_the_probe_does_not_depend_on_the_member_count(corpus):
    """A shard of members (or a study with fewer) probes the same windows: same rows."""
    whole = trainer(corpus)
    config = lm_config(corpus)
    part = LMTrainer(config, whole.data, members=members_for(config)[2:5])
    batch = lm_diagnostics.probe_windows(whole.data.train_tokens, 12)
    a = lm_diagnostics.probe(whole.model, *batch, [True] * 6)
    b = lm_diagnostics.probe(part.model, *batch, [True] * 3)
    for name, value in b.items():
        torch.testing.assert_close(value, a[name][2:5], rtol=1e-5, atol=1e-7, equal_nan=True)


def test_epoch_rows_name_every_layer_and_put_the_ffn_on_its_input_row(corpus):
    t = trainer(corpus)
    result = t.train_epoch()
    layers = len(lm_diagnostics.weight_names(2))
    assert layers == 2 + 4 * 2 + 1
    assert len(result.diagnostics) == len(t.members) * layers
    assert set(result.diagnostics[0]) <= set(store.DIAGNOSTICS_COLUMNS)
    labels = lm_diagnostics.layer_labels(2)
    sites = {r["layer"] for r in result.diagnostics if r.get("dead_frac") is not None}
    assert sorted(labels[layer] for layer in sites) == ["block 1 FFN in", "block 2 FFN in"]
    assert all(r["grad_norm"] > 0 and r["probe_grad_norm"] > 0 for r in result.diagnostics)
    assert trainer(corpus, diagnostics=False).train_epoch().diagnostics == []


def test_a_failing_probe_costs_the_diagnostics_not_the_epoch(corpus, monkeypatch):
    t = trainer(corpus)

    def broken(*args):
        raise RuntimeError("probe broke")

    monkeypatch.setattr(lm_diagnostics, "probe", broken)
    with pytest.warns(UserWarning, match="diagnostics of epoch 1 skipped: the probe raised"):
        result = t.train_epoch()
    assert result.diagnostics == [] and len(result.metrics) == len(t.members)


def test_the_lm_report_shows_the_diagnostics_by_layer_name(corpus, tmp_path):
    """A study's diagnostics.csv, and its report: the FFN table and the gradient table
    quote the csv's means over seeds, by layer name; nothing says accuracy."""
    out = tmp_path / "run"
    code, _, err = run_cli(
        "compare", "--threads", "1", "--quiet", "--net", "gpt", "--dataset", f"text:{corpus}",
        "--activations", "relu,swiglu", "--seeds", "2", "--epochs", "2", "--width", "16",
        "--layers", "2", "--heads", "2", "--context", "12", "--batch-size", "16",
        "--lr", "3e-3", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    frame = store.read_run(out).diagnostics
    assert len(frame) == 2 * 2 * 2 * 11 and frame["probe_grad_norm"].notna().all()
    report = (out / "report.md").read_text(encoding="utf-8")
    section = report[report.index("## Diagnostics") :]
    last = frame[frame["epoch"] == 2]
    ffn = last[last["layer"] == lm_diagnostics.ffn_rows(2)[1]].groupby("activation")
    dead, saturated = ffn["dead_frac"].mean(), ffn["saturated_frac"].mean()
    expected = (
        f"| block 2 | {100 * dead['relu']:.1f}% / {100 * saturated['relu']:.1f}% | "
        f"{100 * dead['swiglu']:.1f}% / {100 * saturated['swiglu']:.1f}% |"
    )
    assert expected in section
    grads = frame[frame["layer"] == 11].groupby(["activation", "epoch"])["grad_norm"].mean()
    assert f"| head | {grads['relu', 1]:.3g} → {grads['relu', 2]:.3g} |" in section
    assert "accuracy" not in report.lower()
    assert '<h2 id="diagnostics">' in (out / "report.html").read_text(encoding="utf-8")
