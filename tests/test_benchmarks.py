"""The speed benchmarks measure what they say: the vmap peer of benchmarks/seed_protocol.py
trains exactly the four plain models, and the step floor of benchmarks/floor.py does
exactly the GEMMs its FLOP count claims, on the shapes of actlab's step."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import floor  # noqa: E402
import model_zoo  # noqa: E402
import seed_protocol  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def small_dataset(n: int = 128, classes: int = 10) -> SimpleNamespace:
    gen = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        x_train=torch.rand(n, 1, 8, 8, generator=gen),
        y_train=torch.randint(0, classes, (n,), generator=gen),
        x_test=torch.rand(50, 1, 8, 8, generator=gen),
        y_test=torch.randint(0, classes, (50,), generator=gen),
        num_classes=classes,
    )


def test_vmap_peer_trains_exactly_the_plain_models_one_by_one():
    data = small_dataset()
    peer = seed_protocol.PeerRun(data, data.x_train)
    peer.train_epoch()  # 2 steps of 64, the order of torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))
    accuracies = peer.test_accuracy(data, data.x_test)
    for k, name in enumerate(seed_protocol.ACTIVATIONS):
        plain = seed_protocol.PlainRun(data, name, data.x_train)  # built after manual_seed(0)
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            plain.optimizer.zero_grad()
            F.cross_entropy(plain.model(data.x_train[index]), data.y_train[index]).backward()
            plain.optimizer.step()
        plain_params = dict(plain.model.named_parameters())
        for key, stacked in peer.params.items():
            torch.testing.assert_close(stacked[k].detach(), plain_params[key].detach())
        assert accuracies[name] == plain.test_accuracy(data, data.x_test)


@pytest.mark.parametrize("members", [4, 8])
def test_floor_does_the_gemms_it_counts_at_the_step_shapes(members):
    config = floor.protocol_config(members, hidden=(32, 16), batch_size=20)
    shape = floor.StepShape.of(config, 64, 10)
    assert shape.params == members * (65 * 32 + 33 * 16 + 17 * 10)
    step_floor = floor.StepFloor(shape)
    with FlopCounterMode(display=False) as counter:
        step_floor.forward()
        step_floor.backward()
    assert counter.get_total_flops() == shape.flops
    # The same GEMMs as actlab's step: its matmul FLOPs per step are the floor's.
    trainer = floor.Trainer(config, floor.random_data(shape, 40, input_shape=(1, 8, 8)))
    index = torch.arange(20).view(1, 20).expand(shape.seeds, 20)
    trainer._host_checked_step(index)  # warm: workspaces allocated
    with FlopCounterMode(display=False) as counter:
        trainer._host_checked_step(index)
    assert counter.get_total_flops() == shape.flops


def test_floor_adam_is_one_adam_pass_over_every_parameter():
    shape = floor.StepShape(members=4, seeds=1, batch=8, widths=(12, 6, 3))
    step_floor = floor.StepFloor(shape)
    exp_avg = [m.clone() for m in step_floor.exp_avg]
    exp_avg_sq = [v.clone() for v in step_floor.exp_avg_sq]
    step_floor.adam()
    assert sum(p.numel() for p in step_floor.params) == shape.params
    for m, m0, v, v0, g in zip(
        step_floor.exp_avg,
        exp_avg,
        step_floor.exp_avg_sq,
        exp_avg_sq,
        step_floor.grads,
        strict=True,
    ):  # every moment of every parameter was read and written
        torch.testing.assert_close(m, 0.9 * m0 + 0.1 * g)
        torch.testing.assert_close(v, 0.999 * v0 + 0.001 * g * g)


def test_model_zoo_table_says_what_each_local_model_runs_and_what_actlab_did(tmp_path):
    """benchmarks/model_zoo.py on its torch-only zoo (torchvision and timm do not import
    here): gates left alone and said, a builder whose act() misses a ReLU, a transformer
    layer's activation argument, the vmap stacking, and a model that does not run."""
    zoo = {model.name: model for model in model_zoo.local_zoo(tmp_path)}
    broken = model_zoo.ZooModel("broken", model_zoo.UserModel("broken", lambda: torch.nn.Linear(3, 2),
                                model_zoo.MODULE), (1, 6, 6))  # fmt: skip
    names = ("SENet", "timm_net_partial", "encoder_string", "vit.py:vit_tiny")
    rows = {name: model_zoo.coverage(zoo[name]) for name in names}
    rows["broken"] = model_zoo.coverage(broken)
    se = rows["SENet"]
    assert se.present == "relu x3, sigmoid x1, hardsigmoid x1" and se.replaced == "nn.ReLU x3"
    assert "nn.Sigmoid se1.gate" in se.left and "nn.Hardsigmoid se2.gate" in se.left
    assert se.remaining == "-" and se.stacking == "vmap"
    partial = rows["timm_net_partial"]
    assert partial.replaced == "act() x1" and partial.remaining == "relu x1 (3.act)"
    encoder = rows["encoder_string"]
    assert encoder.replaced == "TransformerEncoderLayer(activation='relu') x2"
    assert "_transformer_encoder_layer_fwd x2" in encoder.present  # the user's eval fast path
    assert encoder.remaining == "-" and encoder.stacking == "vmap"
    assert rows["vit.py:vit_tiny"].replaced == "act() x2"
    assert rows["broken"].stacking.startswith("does not run: RuntimeError: mat1 and mat2")
    lines = model_zoo.table(list(rows.values())).splitlines()
    assert lines[0] == "| " + " | ".join(model_zoo.COLUMNS) + " |" and len(lines) == 2 + 5
