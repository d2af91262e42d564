"""The engine on a CUDA device (skipped where there is none, e.g. in CI).

On a GPU the engine keeps the divergence check on the device (no host sync per step), the
dataset, the permutations and the dropout generators live there, and convolutions may use
TF32. These tests hold it to the same oracles as the CPU path: plain nn.Modules trained
one by one on the same device, and the CPU engine itself."""

import io
import math

import pytest
import torch
from fixtures.data import write_npz
from fixtures.engine import N_TRAIN, make_data, small_config, train_plain
from fixtures.run_dir import metric_rows

from actlab.cli.main import main
from actlab.config import ExperimentConfig
from actlab.engine.batches import DeviceData
from actlab.engine.trainer import Trainer, train
from actlab.study import store
from actlab.study.driver import run_study

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def on_cuda(data: DeviceData) -> DeviceData:
    fields = [getattr(data, name) for name in ("x_train", "y_train", "x_val", "y_val")]
    fields += [data.x_test, data.y_test]
    return DeviceData(*[t.cuda() for t in fields], data.num_classes, data.input_shape)


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 convolutions differ from float32 by ~1e-3: compare in full float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


CASES = {
    "adam": {},
    "adam-two-lrs": {"lrs": (1e-3, 1e-2)},
    "adamw": {"optimizer": "adamw", "weight_decay": 0.05},
    "sgd-momentum": {"optimizer": "sgd", "lrs": (0.05,)},
    "adam-learnable-prelu": {"activations": ("relu", "prelu", "tanh")},
    "adam-with-diagnostics": {"diagnostics": True},
    "adam-cnn": {"model": "cnn", "hidden": (8,), "activations": ("relu", "tanh"), "seeds": (0,)},
}


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_engine_matches_plain_cuda_models_trained_one_by_one(case):
    data = on_cuda(make_data())
    steps_per_epoch = math.ceil(N_TRAIN / 40)
    # cuDNN runs a grouped convolution with other algorithms (summation orders) than a
    # plain one. Adam's step lr * m / sqrt(v) is ill-conditioned where the gradient is near
    # 0, so those 1e-7 differences move such a weight by up to lr per step: the CNN is held
    # to 2 epochs, its weights to one lr (seen: 6 of 18432 conv weights off by 2.4e-4).
    cnn = case == "adam-cnn"
    epochs = 2 if cnn else math.ceil(200 / steps_per_epoch)
    config = small_config(epochs=epochs, device="cuda", **CASES[case])
    trainer = Trainer(config, data)
    assert not trainer.check_on_host  # the on-device divergence path
    plain_models = [trainer.model.export_member(k) for k in range(len(trainer.members))]
    assert all(p.is_cuda for model in plain_models for p in model.parameters())
    fused_losses = []
    for _ in range(epochs):
        result = trainer.train_epoch(lambda info: fused_losses.append(info.losses.tolist()))
        assert all(row["status"] == "ok" for row in result.metrics)
    for k, member in enumerate(trainer.members):
        plain_losses = train_plain(config, data, plain_models[k], member, len(fused_losses))
        fused = torch.tensor([losses[k] for losses in fused_losses])
        torch.testing.assert_close(fused, torch.tensor(plain_losses), rtol=1e-4, atol=1e-5)
        exported = trainer.model.export_member(k)
        for fused_p, plain_p in zip(
            exported.parameters(), plain_models[k].parameters(), strict=True
        ):
            torch.testing.assert_close(fused_p, plain_p, rtol=1e-4, atol=1e-3 if cnn else 1e-4)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_cuda_and_cpu_engines_agree(model):
    changes = {"model": model, "hidden": (8,)} if model == "cnn" else {}
    config = small_config(epochs=2, diagnostics=True, **changes)
    cpu_rows = [r for result in train(config, make_data()) for r in result.metrics]
    cuda_config = config.replace(device="cuda")
    cuda_rows = [r for result in train(cuda_config, on_cuda(make_data())) for r in result.metrics]
    assert len(cpu_rows) == len(cuda_rows)
    for cpu_row, cuda_row in zip(cpu_rows, cuda_rows, strict=True):
        assert cpu_row["status"] == cuda_row["status"] == "ok"
        for name in ("train_loss", "test_loss"):
            assert cuda_row[name] == pytest.approx(cpu_row[name], rel=1e-3)
        assert abs(cuda_row["test_acc"] - cpu_row["test_acc"]) <= 2 / 128  # a sample or two


def test_cuda_divergence_is_caught_on_the_device_and_the_others_finish():
    config = small_config(activations=("relu", "sigmoid"), seeds=(0,), lrs=(1e-3, 10.0),
                          epochs=3, device="cuda")  # fmt: skip
    trainer = Trainer(config, on_cuda(make_data()))
    results = [trainer.train_epoch() for _ in range(3)]
    diverged = {k for r in results for k in r.diverged}
    assert diverged and all(trainer.members[k].lr == 10.0 for k in diverged)
    last = {row["member"]: row for row in results[-1].metrics}
    for k, member in enumerate(trainer.members):
        if member.lr == 1e-3:
            assert last[k]["status"] == "ok" and math.isfinite(last[k]["train_loss"])
    frozen = [w.detach().clone() for w in trainer.model.weight_layers()]
    trainer.train_epoch()
    for k in diverged:
        for before, weight in zip(frozen, trainer.model.weight_layers(), strict=True):
            assert torch.equal(before[k], weight.detach()[k])


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_cuda_resume_from_a_checkpoint_continues_identically(dropout):
    config = small_config(epochs=3, dropout=dropout, device="cuda")
    data = on_cuda(make_data())

    def without_time(results):
        return [
            {k: v for k, v in r.items() if k != "epoch_time_s"} for x in results for r in x.metrics
        ]

    straight = without_time(train(config, data))
    first = next(train(config, data))
    buffer = io.BytesIO()
    torch.save(first.state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True, map_location="cpu")  # as resume loads it
    resumed = without_time(train(config, data, state=state))
    assert len(resumed) == len(straight[6:])
    for a, b in zip(resumed, straight[6:], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
            else:
                assert a[key] == b[key], key


def test_compare_cli_on_cuda_writes_and_resumes_the_run(tmp_path):
    data = write_npz(tmp_path / "small.npz", 512, 128)
    run = tmp_path / "run"
    args = ["compare", "--dataset", data, "--epochs", "2", "--hidden", "16", "--seeds", "2",
            "--activations", "relu,tanh", "--device", "cuda", "--quiet", "--out", str(run)]  # fmt: skip
    config = ExperimentConfig(dataset=data, epochs=2, hidden=(16,), seeds=(0, 1),
                              activations=("relu", "tanh"), device="cuda")  # fmt: skip

    def stop_after_epoch_1(result):
        if result.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(config, out=run, on_epoch=stop_after_epoch_1)
    assert main(args) == 0
    rows = metric_rows(run)
    assert len(rows) == 2 * 2 * 2 and all(r["status"] == "ok" for r in rows)
    loaded = store.read_run(run)
    assert loaded.environment["device"].startswith("cuda")
    assert (run / "report.html").is_file()


@pytest.mark.parametrize(
    "changes",
    [{}, {"lrs": (1e-3, 1e-2), "optimizer": "adamw", "weight_decay": 0.01},
     {"optimizer": "sgd", "lrs": (0.05,)}, {"diagnostics": True},
     {"activations": ("relu", "expr:x * tanh(softplus(x))")}],
    ids=["adam", "adamw-two-lrs", "sgd", "diagnostics", "autograd-activation"],
)  # fmt: skip
def test_cuda_graph_replays_match_eager_steps(changes):
    config = small_config(epochs=2, device="cuda", **changes)
    data = on_cuda(make_data())
    graphed, eager = Trainer(config, data), Trainer(config, data)
    eager._graph = None
    graphed_rows = [graphed.train_epoch().metrics for _ in range(2)]
    eager_rows = [eager.train_epoch().metrics for _ in range(2)]
    assert graphed._graph is not None and graphed._graph.graph is not None  # replayed
    assert graphed.optimizer.step_count == eager.optimizer.step_count
    for a, b in zip(sum(graphed_rows, []), sum(eager_rows, []), strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for p, q in zip(graphed.optimizer.params, eager.optimizer.params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "changes",
    [{"model": "cnn", "hidden": (8,)}, {"activations": ("relu", "prelu")}, {"dropout": 0.2}],
    ids=["cnn", "learnable", "dropout"],
)
def test_models_outside_the_graph_step_eagerly(changes):
    trainer = Trainer(small_config(device="cuda", **changes), on_cuda(make_data()))
    assert trainer._graph is None
    assert all(row["status"] == "ok" for row in trainer.train_epoch().metrics)
