"""The user-model examples (examples/*.py) train on real Fashion-MNIST and on 32x32 RGB."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import actlab
import actlab.study.store
from actlab.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.realdata
@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_keras_example_learns_fashion_mnist(tmp_path):
    """(The ResNet example runs on real Fashion-MNIST in .ci/run: too slow for here.)"""
    run = tmp_path / "run"
    code = main(["compare", "--model", f"{EXAMPLES / 'keras_mlp.py'}:KerasMLP", "--swap", "relu",
                 "--dataset", "fashion-mnist", "--epochs", "1", "--limit-train", "3000",
                 "--limit-test", "500", "--batch-size", "32", "--activations", "relu,gelu", "--seeds", "1",
                 "--threads", "1", "--quiet", "--no-report", "--out", str(run)])  # fmt: skip
    assert code == 0
    frame = actlab.study.store.read_run(run).metrics
    assert len(frame) == 2 and (frame["train_loss"] < math.log(10)).all(), frame
    assert (frame["test_acc"] > 0.6).all(), frame


@pytest.mark.parametrize(
    ("name", "shape"), [("resnet8", (1, 28, 28)), ("resnet8_rgb", (3, 32, 32))]
)
def test_resnet_example_takes_28x28_gray_and_32x32_rgb_images(name, shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(24, *shape, generator=generator)
    y = torch.randint(0, 10, (24,), generator=generator)
    frame = actlab.compare(
        model=f"{EXAMPLES / 'resnet.py'}:{name}", dataset=(x[:16], y[:16], x[16:], y[16:]),
        activations=["relu", "silu"], seeds=1, epochs=1, batch_size=8, threads=1, diagnostics=False,
    )  # fmt: skip
    assert len(frame) == 2 and frame["test_loss"].notna().all()
