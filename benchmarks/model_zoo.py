"""Coverage of real model zoos: what actlab does to each model, as a table.

For every model of a zoo, the checks a study makes before training (actlab.engine.vmap_stack
builds two members of one activation exactly as ``actlab compare --model`` does), and one
row of a table:

- **present**: the activation ops the user's own network runs (module as built; a builder
  given ``nn.ReLU``), counted by aten op in a real forward in train mode and in eval mode
  under no_grad (the larger count of the two; actlab.nn.census);
- **replaced**: what the swap replaced (modules, calls in forward, the activation of torch's
  transformer layers), or the builder's ``act()`` places;
- **left alone**: what the swap left and why (gates, forwards fx could not read);
- **still running**: ops of the replaced kinds that still run after the swap (counted in a
  forward, train and eval/no_grad);
- **stacking**: ``vmap`` when the members run as one vmapped call, else the fallback (one
  by one) and why; ``refused: ...`` when a check refused the model (the line a user sees),
  ``does not run: ...`` when the network itself raised.

Zoos: ``local`` (torch only, always: the examples and the architectures written in
tests/nn/test_real_models.py), ``torchvision`` (``torchvision.models.list_models()``) and
``timm`` (``timm.list_models(--timm)``), each when it imports; a zoo that does not import is
one line.

    python benchmarks/model_zoo.py                          # every zoo that imports
    python benchmarks/model_zoo.py --zoo torchvision --limit 20 --activation silu
    python benchmarks/model_zoo.py --zoo timm --timm 'mobilenetv3*,lcnet*,vit_tiny*'
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from actlab.config import Member
from actlab.errors import ConfigError
from actlab.nn.census import OPS_OF_CLASS, remaining_after_swap
from actlab.nn.user_model import BUILDER, MODULE, UserModel, load

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [  # (reference in examples/, input shape)
    ("resnet.py:resnet8", (1, 28, 28)),
    ("resnet.py:resnet8_rgb", (3, 32, 32)),
    ("vit.py:vit_tiny", (1, 28, 28)),
    ("mlp.py:mlp", (1, 28, 28)),
]
# The torch-only architectures of tests/nn/test_real_models.py (6x6 one-channel images).
TEST_ARCHITECTURES = (
    "encoder_string", "encoder_module", "encoder_string_seq_first", "encoder_module_seq_first",
    "SENet", "timm_net", "timm_net_partial", "vit",
)  # fmt: skip
COLUMNS = ("model", "present", "replaced", "left alone", "still running", "stacking")


@dataclass
class ZooModel:
    name: str
    user: UserModel
    input_shape: tuple[int, ...]


@dataclass
class Row:
    model: str
    present: str
    replaced: str
    left: str
    remaining: str
    stacking: str

    def cells(self) -> list[str]:
        return [self.model, self.present, self.replaced, self.left, self.remaining, self.stacking]


# === zoos ================================================================================


def local_zoo(folder: Path) -> list[ZooModel]:
    """The examples, and the architectures of tests/nn/test_real_models.py written to `folder`
    (when the tests are there)."""
    zoo = [
        ZooModel(reference, load(str(ROOT / "examples" / reference)), shape)
        for reference, shape in EXAMPLES
    ]
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_real_models import MODELS
    except ImportError:
        return zoo
    finally:
        sys.path.remove(str(ROOT / "tests"))
    path = folder / "real_models.py"
    path.write_text(MODELS)
    zoo += [ZooModel(name, load(f"{path}:{name}"), (1, 6, 6)) for name in TEST_ARCHITECTURES]
    return zoo


def torchvision_zoo(names: str) -> list[ZooModel]:
    """torchvision's classification models (random weights, 10 classes), 224x224 RGB
    (inception_v3: 299x299)."""
    import torchvision

    zoo = []
    for name in torchvision.models.list_models(module=torchvision.models):
        if not _matches(name, names):
            continue
        factory = functools.partial(torchvision.models.get_model, name, weights=None,
                                    num_classes=10)  # fmt: skip
        shape = (3, 299, 299) if name == "inception_v3" else (3, 224, 224)
        zoo.append(ZooModel(f"tv:{name}", UserModel(f"torchvision:{name}", factory, MODULE), shape))
    return zoo


def timm_zoo(names: str) -> list[ZooModel]:
    """timm's models matching `names` (random weights, 10 classes), at their input size."""
    import timm

    zoo = []
    for name in timm.list_models():
        if not _matches(name, names):
            continue
        factory = functools.partial(timm.create_model, name, pretrained=False, num_classes=10)
        try:
            shape = tuple(timm.models.get_pretrained_cfg(name).input_size)
        except Exception:  # no default config: timm's usual size
            shape = (3, 224, 224)
        zoo.append(ZooModel(f"timm:{name}", UserModel(f"timm:{name}", factory, MODULE), shape))
    return zoo


def _matches(name: str, patterns: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns.split(",") if p)


# === the checks ==========================================================================


def coverage(model: ZooModel, activation: str = "gelu") -> Row:
    """One row: what `model` runs, and what a study of `activation` does to it."""
    sample = torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(0))
    try:
        present, classes = _present(model.user, sample)
    except Exception as error:  # the model itself does not build or run
        raised = f"{type(error).__name__}: {_first_line(error)}"
        return Row(model.name, "-", "-", "-", "-", f"does not run: {raised}")
    from actlab.engine.vmap_stack import StackedUserModel

    members = [Member(0, activation, 0, 1e-3), Member(1, activation, 1, 1e-3)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the notices: the table says the same
            stacked = StackedUserModel(model.user, members, (), sample, classes, "cpu",
                                       stacking="vmap", batch_size=2)  # fmt: skip
    except ConfigError as error:
        return Row(model.name, present, "-", "-", "-", f"refused: {_first_line(error)}")
    report = stacked.swap_reports[activation]
    replaced = ", ".join(f"{kind} x{n}" for kind, n in report.counts().items())
    left = [f"{kind} {path} ({why})" for path, kind, why in report.left]
    left += [f"{module}.forward unread ({why})" for module, why in report.untraced]
    remaining = ", ".join(f"{op} x{n} ({where})" for op, where, n in report.remaining)
    group = stacked.groups[0]
    stacking = "vmap" if group.stacked else f"one by one: {group.reason}"
    return Row(model.name, present, replaced or "none", "; ".join(left) or "-",
               remaining or "-", stacking)  # fmt: skip


def _present(user: UserModel, sample: torch.Tensor) -> tuple[str, int]:
    """The activation ops of the user's own network, train and eval/no_grad, and its
    number of classes (its output's last dim)."""
    torch.manual_seed(0)
    if user.kind == BUILDER:
        network = user.factory(lambda *args, inplace=False, **kwargs: nn.ReLU(inplace=inplace))
    else:
        network = user.factory()
    found = remaining_after_swap(
        network, lambda: network(sample.clone()), list(OPS_OF_CLASS), placed=()
    )
    network.eval()
    with torch.no_grad():
        out = network(sample)
    out = out[0] if isinstance(out, tuple | list) else out
    counts: dict[str, int] = {}
    for op, _, n in found:
        counts[op.rstrip("_")] = counts.get(op.rstrip("_"), 0) + n
    return ", ".join(f"{op} x{n}" for op, n in counts.items()) or "none", int(out.shape[-1])


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0][:160] if text else type(error).__name__).removeprefix("--model ")


# === the table ===========================================================================


def table(rows: list[Row]) -> str:
    """A Markdown table, one row per model."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |")
    return "\n".join(lines)


def rows_of(zoo: list[ZooModel], activation: str, say: Callable[[str], None]) -> Iterator[Row]:
    for index, model in enumerate(zoo, 1):
        say(f"[{index}/{len(zoo)}] {model.name}")
        yield coverage(model, activation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="local,torchvision,timm")
    parser.add_argument("--activation", default="gelu", help="the members' activation")
    parser.add_argument("--torchvision", default="*", help="model name patterns, comma-separated")
    parser.add_argument("--timm", default="resnet*,mobilenetv3*,efficientnet_b0,lcnet*,"
                        "ghostnet*,regnet*,convnext_atto*,vit_tiny*,deit_tiny*")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="models per zoo, at most")
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoos: dict[str, Callable[[], list[ZooModel]]] = {
        "torchvision": lambda: torchvision_zoo(args.torchvision),
        "timm": lambda: timm_zoo(args.timm),
    }
    skipped = []
    with tempfile.TemporaryDirectory() as folder:
        zoos["local"] = lambda: local_zoo(Path(folder))
        for name in args.zoo.split(","):
            try:
                zoo = zoos[name]()[: args.limit]
            except ImportError:
                skipped.append(name)
                continue
            except Exception as error:  # installed, but broken (e.g. built for another torch)
                print(f"skipped: {name} does not import here ({_first_line(error)})")
                continue
            say = functools.partial(print, file=sys.stderr, flush=True)
            rows = list(rows_of(zoo, args.activation, say))
            print(f"{name}: {len(rows)} models, members of {args.activation}\n")
            print(table(rows) + "\n", flush=True)
    if skipped:
        names = " and ".join(skipped)
        print(f"skipped: {names} not importable here (pip install {' '.join(skipped)})")


if __name__ == "__main__":
    main()
