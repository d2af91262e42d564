"""The fused engine against its oracle: K plain nn.Modules + torch.optim trained one by one
on the same batches must give the same per-step losses and final weights."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from fixtures.engine import N_TRAIN, make_data, small_config, train_plain

from actlab.engine import native
from actlab.engine.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")


ORACLE_CASES = {
    "adam": {},
    "adamw": {"optimizer": "adamw", "weight_decay": 0.05},
    "sgd-momentum": {"optimizer": "sgd", "lrs": (0.05,), "weight_decay": 1e-3},
    "adam-two-lrs": {"lrs": (1e-3, 1e-2)},
    "adam-learnable-prelu": {"activations": ("relu", "prelu", "tanh")},
    "adam-with-diagnostics": {"diagnostics": True},
    "adam-cnn": {"model": "cnn", "hidden": (8,), "activations": ("relu", "tanh"), "seeds": (0,)},
    "adam-more-activations": {"activations": ("leaky_relu", "silu", "relu6", "hard_tanh")},
    "adam-gelu-elu": {"activations": ("gelu", "gelu_tanh", "elu", "selu", "hard_swish")},
    "adam-softplus-mish": {
        "activations": ("relu", "softplus", "mish", "soft_shrink"),
        "hidden": (16, 12, 8),
    },
}
# The MLP step runs compiled kernels where it can (actlab.engine.native); these cases also run
# with its torch kernels, the fallback.
TORCH_KERNEL_CASES = (
    "adam",
    "sgd-momentum",
    "adam-two-lrs",
    "adam-more-activations",
    "adam-gelu-elu",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case,kernels",
    [(case, "compiled") for case in ORACLE_CASES]
    + [(case, "torch") for case in TORCH_KERNEL_CASES]
    + [("adam-softplus-mish", "partial")],
)
def test_fused_engine_matches_plain_models_trained_one_by_one(case, kernels, monkeypatch):
    if kernels == "torch":
        monkeypatch.setattr(native, "library", lambda: None)
    if kernels == "partial":
        monkeypatch.delitem(native.CODES, "mish")
    data = make_data()
    steps_per_epoch = math.ceil(N_TRAIN / 40)
    epochs = math.ceil(200 / steps_per_epoch)
    config = small_config(epochs=epochs, **ORACLE_CASES[case])
    trainer = Trainer(config, data)
    if kernels == "torch":
        assert trainer.mlp_step is not None and trainer.mlp_step.native is None
    if kernels == "partial":
        assert trainer.mlp_step._uncoded == [2]
    plain_models = [trainer.model.export_member(k) for k in range(len(trainer.members))]
    fused_losses, train_acc = [], []
    for _ in range(epochs):
        result = trainer.train_epoch(lambda info: fused_losses.append(info.losses.tolist()))
        assert all(row["status"] == "ok" for row in result.metrics)
        train_acc.append([row["train_acc"] for row in result.metrics])
    steps = len(fused_losses)
    assert steps == epochs * steps_per_epoch >= 200

    for k, member in enumerate(trainer.members):
        plain_losses, plain_correct = train_plain(config, data, plain_models[k], member, steps)
        fused = torch.tensor([losses[k] for losses in fused_losses])
        torch.testing.assert_close(fused, torch.tensor(plain_losses), rtol=1e-4, atol=1e-6)
        # The first epoch's training accuracy: the same predictions, counted on the fly
        # (later epochs may differ by a near-tie flipped by rounding).
        assert train_acc[0][k] == plain_correct[0] / N_TRAIN
        exported = trainer.model.export_member(k)
        for fused_p, plain_p in zip(
            exported.parameters(), plain_models[k].parameters(), strict=True
        ):
            torch.testing.assert_close(fused_p, plain_p, rtol=1e-4, atol=1e-5)


def test_members_sharing_a_seed_share_initial_weights_and_batch_order():
    data = make_data()
    config = small_config()
    trainer = Trainer(config, data)
    first = [p.detach() for p in trainer.model.export_member(0).parameters()]
    third = [p.detach() for p in trainer.model.export_member(2).parameters()]  # seed 0, tanh
    other_seed = [p.detach() for p in trainer.model.export_member(3).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(first, third, strict=True))
    assert not torch.equal(first[0], other_seed[0])


def test_metrics_rows_and_evaluation_match_a_plain_evaluation():
    data = make_data()
    config = small_config(epochs=2)
    rows = [r for result in train(config, data) for r in result.metrics]
    assert len(rows) == 2 * 6
    assert [r["epoch"] for r in rows] == [1] * 6 + [2] * 6
    for row in rows:
        assert row["status"] == "ok"
        assert 0.0 <= row["train_acc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0
        assert row["val_loss"] is None and row["val_acc"] is None  # no validation split
    # Evaluation equals a plain evaluation of the exported member.
    trainer = Trainer(config, data)
    trainer.train_epoch()
    losses, accuracies = trainer.evaluate(data.x_test, data.y_test)
    for k in range(len(trainer.members)):
        plain = trainer.model.export_member(k).eval()
        with torch.no_grad():
            logits = plain(data.x_test)
        assert losses[k] == pytest.approx(F.cross_entropy(logits, data.y_test).item(), rel=1e-5)
        expected = (logits.argmax(1) == data.y_test).double().mean().item()
        assert accuracies[k] == pytest.approx(expected)


def test_same_config_twice_gives_identical_metrics():
    data = make_data()
    config = small_config(epochs=2, diagnostics=True)

    def run():
        rows = []
        for result in train(config, data):
            rows += [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in result.metrics]
            rows += result.diagnostics
        return rows

    assert run() == run()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_resuming_from_a_saved_state_continues_identically(dropout):
    data = make_data()
    config = small_config(epochs=3, dropout=dropout)

    def without_time(results):
        return [
            {k: v for k, v in r.items() if k != "epoch_time_s"} for x in results for r in x.metrics
        ]

    straight = without_time(train(config, data))
    first = next(train(config, data))
    buffer = io.BytesIO()  # the checkpoint round trip
    torch.save(first.state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert without_time(train(config, data, state=state)) == straight[6:]


def test_diverging_members_are_frozen_and_the_others_finish():
    data = make_data()
    # relu with lr 10 blows up; sigmoid and tanh at lr 1e-3 keep training.
    config = small_config(activations=("relu", "sigmoid"), seeds=(0,), lrs=(1e-3, 10.0), epochs=3)
    trainer = Trainer(config, data)
    results = [trainer.train_epoch() for _ in range(3)]
    labels = {k: (m.activation, m.lr) for k, m in enumerate(trainer.members)}
    diverged = {k for r in results for k in r.diverged}
    assert diverged, "a member at lr 10 should diverge"
    assert all(labels[k][1] == 10.0 for k in diverged)
    for k in diverged:
        rows = [row for r in results for row in r.metrics if row["member"] == k]
        assert rows[-1]["status"] == "diverged" and rows[-1]["train_loss"] is None
        assert all(row["status"] == "ok" for row in rows[:-1])
    survivors = [k for k in labels if labels[k][1] == 1e-3]
    last = {row["member"]: row for row in results[-1].metrics}
    for k in survivors:
        assert last[k]["status"] == "ok" and math.isfinite(last[k]["train_loss"])
    # Frozen members do not change any more.
    frozen_before = [w.detach().clone() for w in trainer.model.weight_layers()]
    trainer.train_epoch()
    for k in diverged:
        for before, weight in zip(frozen_before, trainer.model.weight_layers(), strict=True):
            assert torch.equal(before[k], weight.detach()[k])


@pytest.mark.parametrize("check_on_host", [True, False], ids=["cpu-path", "gpu-path"])
def test_nan_in_one_member_does_not_poison_the_others(check_on_host):
    data = make_data()
    config = small_config(epochs=1)
    clean = Trainer(config, data)
    poisoned = Trainer(config, data)
    poisoned.check_on_host = check_on_host  # the GPU path keeps the check on the device
    with torch.no_grad():
        poisoned.model.weight_layers()[1][4].fill_(float("nan"))  # member 4: seed 1, sigmoid
    clean_result, poisoned_result = clean.train_epoch(), poisoned.train_epoch()
    assert poisoned_result.diverged == [4]
    assert poisoned.optimizer.frozen() == [4]
    for a, b in zip(clean_result.metrics, poisoned_result.metrics, strict=True):
        if a["member"] != 4:
            assert {k: v for k, v in a.items() if k != "epoch_time_s"} == {
                k: v for k, v in b.items() if k != "epoch_time_s"
            }
