"""The user's own network: load it by reference, build it per member, swap its activations.

A model reference is ``FILE.py:NAME`` or ``module.path:NAME``. NAME is either

- a **builder**: a callable with one required argument, the activation factory ``act``
  (``act()`` returns a fresh activation module: timm's ``act_layer`` convention), or
- a **module**: an ``nn.Module`` class or a zero-argument factory; its activations are
  swapped for each member's (`swap`).

Each member's network is built after ``torch.manual_seed(seed)`` (inside a forked RNG,
so the caller's global RNG is untouched): its initial weights are exactly those the user
gets building it alone with that seed.

Swapping (actlab.nn.swap) replaces the rectifier-family activation modules, the activation
of torch's transformer layers, and functional calls in ``forward`` (through ``torch.fx``),
and leaves gates (sigmoid, hard-sigmoid, tanh modules) alone unless named. What a swap or a
builder's ``act()`` did not reach is counted in a real forward pass (actlab.nn.census) and
said in the summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from actlab.catalog import gated
from actlab.catalog import registry as catalog
from actlab.errors import ConfigError, SpecError
from actlab.nn.census import remaining_after_swap
from actlab.nn.swap import (  # noqa: F401  (the swap API, also importable from here)
    DEFAULT_CALLS,
    RECTIFIERS,
    SwapReport,
    activation_sites,
    fresh_activation,
    swap,
    swap_activations,
)

if TYPE_CHECKING:
    from actlab.config import ExperimentConfig

BUILDER = "builder"
MODULE = "module"

# === loading =============================================================================


@dataclass(frozen=True)
class UserModel:
    """A loaded model reference: what to call and how."""

    reference: str  # "my_net.py:build", "pkg.models:resnet8", "module:qualname"
    factory: Callable = field(compare=False, repr=False)
    kind: str  # BUILDER (takes the activation factory) or MODULE (activations swapped)
    source: str | None = None  # the file its code lives in
    sha256: str | None = None  # of that file

    @property
    def name(self) -> str:
        return self.reference.rsplit(":", 1)[-1]


# Objects given from Python (``actlab.compare(model=build)``), by reference: a run's
# trainer finds them here without importing anything.
_GIVEN: dict[str, UserModel] = {}


def load(reference: str) -> UserModel:
    """Load ``FILE.py:NAME`` or ``module.path:NAME``; one-line ConfigError for every way it
    can go wrong (missing file, import error, missing NAME, NAME of the wrong kind)."""
    if reference in _GIVEN:
        return _GIVEN[reference]
    where, sep, name = reference.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(
            f"--model {reference!r}: expected FILE.py:NAME or module.path:NAME, e.g. my_net.py:build"
        )
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"--model {reference!r}: file {where} not found; give the path of your .py file"
            )
        module = _import_file(path, reference)
        source = str(path.resolve())
    else:
        module = _import_module(where, reference)
        source = getattr(module, "__file__", None)
    if not hasattr(module, name):
        defined = sorted(
            n
            for n, v in vars(module).items()
            if not n.startswith("_")
            and (callable(v))
            and getattr(v, "__module__", None) == module.__name__
        )
        hint = f"; it defines {', '.join(defined)}" if defined else ""
        raise ConfigError(f"--model {reference!r}: {where} has no {name!r}{hint}")
    return _classify(reference, getattr(module, name), source)


def load_for(config: ExperimentConfig) -> UserModel:
    """The user model of an ExperimentConfig: its reference, or the recorded absolute path
    of its file when the reference is a relative path that does not resolve from here (a
    run resumed, or a shard trained, from another working directory)."""
    where, _, name = config.model.rpartition(":")
    source = config.model_source
    if (
        config.model not in _GIVEN
        and where.endswith(".py")
        and not Path(where).expanduser().is_file()
        and source
        and Path(source).is_file()
    ):
        return load(f"{source}:{name}")
    return load(config.model)


def from_object(obj: object) -> UserModel:
    """A UserModel for a builder, a module class or a factory given from Python."""
    if isinstance(obj, str):
        return load(obj)
    if isinstance(obj, nn.Module):
        raise ConfigError(
            f"model is an nn.Module instance ({type(obj).__name__}); give its class or a "
            "function that builds it, so each member is built after its own seed"
        )
    module_name = getattr(obj, "__module__", None) or "__main__"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    module = sys.modules.get(module_name)
    source = getattr(module, "__file__", None)
    with contextlib.suppress(TypeError, OSError):
        source = inspect.getsourcefile(obj) or source
    loaded = _classify(f"{module_name}:{qualname}", obj, source)
    _GIVEN[loaded.reference] = loaded
    return loaded


def file_sha256(path: str | None) -> str | None:
    """SHA-256 of a source file (None when there is no file, e.g. a notebook cell)."""
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _import_file(path: Path, reference: str):
    # A name of its own per file, so two files called model.py do not collide.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"actlab_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--model {reference!r}: cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # Its own folder first, so it can import its neighbours, as `python FILE.py` would.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's code: any error is theirs to fix
        del sys.modules[module_name]
        raise ConfigError(
            f"--model {reference!r}: importing {path} failed: {_first_line(error)}"
        ) from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import_module(name: str, reference: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"--model {reference!r}: no module {error.name!r}; give FILE.py:NAME or an importable "
            "module.path:NAME (is the package installed, or the folder on PYTHONPATH?)"
        ) from None
    except Exception as error:
        raise ConfigError(
            f"--model {reference!r}: importing {name} failed: {_first_line(error)}"
        ) from None


def _classify(reference: str, obj: object, source: str | None) -> UserModel:
    """Builder (one required argument: the activation factory) or module (a class or a
    zero-argument factory)."""
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        kind = MODULE
        required = _required_arguments(obj)
        if required:
            raise ConfigError(
                f"--model {reference!r}: {obj.__name__}() needs arguments ({', '.join(required)}); "
                "give a function that builds it without arguments, or a builder taking `act`"
            )
    elif callable(obj) and not isinstance(obj, nn.Module):
        required = _required_arguments(obj)
        if len(required) == 0:
            kind = MODULE
        elif len(required) == 1:
            kind = BUILDER
        else:
            raise ConfigError(
                f"--model {reference!r}: {reference.rsplit(':', 1)[-1]} takes {len(required)} "
                f"arguments ({', '.join(required)}); a builder takes one, the activation factory "
                "`act`, and a module factory none"
            )
    else:
        raise ConfigError(
            f"--model {reference!r} is a {type(obj).__name__}, neither a builder (def build(act)) "
            "nor an nn.Module class or factory"
        )
    return UserModel(reference, obj, kind, source, file_sha256(source))


def _required_arguments(obj: Callable) -> list[str]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# === building a member ===================================================================


class ActFactory:
    """What a builder receives as ``act``: ``act()`` returns a fresh activation module
    (timm's ``act_layer`` convention), and the factory says how to size the layer before it.

    - ``act.name``: the activation spec (``"swiglu"``, ``"relu"``, ...);
    - ``act.gated``: whether it is a gated unit (glu, bilinear, reglu, geglu, swiglu): its
      module takes ``[a, b]``, 2h values along the last dim, and returns ``a * gate(b)``,
      h values (actlab.catalog.gated; the GLU FFN of Shazeer 2020:
      ``FFN(x) = (a * gate(b)) W2`` with ``[a, b] = x W1``);
    - ``act.hidden(n)``: the hidden width at the parameters of n plain units, n for an
      elementwise activation, ``round(2 n / 3)`` for a gated one (3 d F = 2 d n: a gated FFN
      has three d x F matrices where a plain one has two; `gated.gated_hidden`, the rule
      --net gpt uses);
    - ``act.inputs(h)``: the width the layer before ``act()`` must output for h units:
      2h when gated, h otherwise.

    A transformer FFN that every activation fits::

        h = act.hidden(4 * d)
        ffn = nn.Sequential(nn.Linear(d, act.inputs(h)), act(), nn.Linear(h, d))
    """

    def __init__(self, activation: str, report: SwapReport) -> None:
        self.name = activation
        self.gated = gated.is_gated(activation)
        self.made: list[nn.Module] = []
        self._report = report

    def hidden(self, n: int) -> int:
        """Hidden units at the parameters of `n` plain ones (2/3 of n, rounded, when gated)."""
        return gated.ffn_hidden(self.name, int(n))

    def inputs(self, h: int) -> int:
        """The input width act() needs to give `h` units: 2h when gated, else h."""
        return 2 * int(h) if self.gated else int(h)

    def __call__(self, *args, inplace: bool = False, **kwargs) -> nn.Module:
        self._report.ignored_arguments += [repr(a) for a in args]
        self._report.ignored_arguments += [f"{k}={v!r}" for k, v in kwargs.items()]
        if inplace and self.gated:  # its output is half its input: it cannot overwrite it
            self._report.ignored_arguments.append("inplace=True (a gated unit halves the width)")
            inplace = False
        module = fresh_activation(self.name, inplace=bool(inplace))
        self.made.append(module)
        return module

    def __repr__(self) -> str:
        return f"act({self.name!r}, gated={self.gated})"


def build_member(
    user: UserModel,
    activation: str,
    seed: int,
    swap_targets: Sequence[str] = (),
    *,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, SwapReport]:
    """Member (activation, seed) of a study: the user's network built after
    ``torch.manual_seed(seed)``, with `activation` everywhere (passed to the builder, or
    swapped in for `swap_targets`). Returns the network and what was put where.

    A builder's ``act(**kwargs)`` takes timm's ``act_layer`` keywords: ``inplace=True`` is
    honoured (an in-place activation; see actlab.nn.swap.InPlace), any other keyword is
    ignored and listed in the report. `device`: build under ``torch.device(device)`` (the
    "meta" device builds a member without allocating its weights, to size a study)."""
    report = SwapReport(new=activation)
    act = ActFactory(activation, report)
    made = act.made
    if user.kind == BUILDER and swap_targets:
        raise ConfigError(
            f"--swap {','.join(swap_targets)}: {user.reference} is a builder, which places "
            "act() itself; --swap applies to an nn.Module whose activations actlab replaces"
        )
    where = torch.device(device) if device is not None else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), where:
        torch.manual_seed(seed)
        try:
            model = user.factory(act) if user.kind == BUILDER else user.factory()
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(
                f"--model {user.reference}: building it raised {_first_line(error)}"
            ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model {user.reference} returned a {type(model).__name__}, not an nn.Module"
        )
    if user.kind == BUILDER:
        paths = {id(m): name for name, m in model.named_modules()}
        report.modules = [(paths[id(m)], "act()") for m in made if id(m) in paths]
        if not report.modules:
            raise ConfigError(
                f"--model {user.reference}: the builder never put act() in the model; call "
                "act() where each activation goes (e.g. nn.Sequential(nn.Linear(784, 128), act(), ...))"
            )
        return model, report
    model, report = swap(model, activation, swap_targets or None, reference=user.reference)
    return model, report


def placed_activations(model: nn.Module, report: SwapReport) -> list[nn.Module]:
    """The activation modules actlab put in `model` (act() results or swapped-in ones)."""
    modules = dict(model.named_modules())
    return [modules[path] for path in report.sites if path in modules]


def count_remaining(
    model: nn.Module,
    report: SwapReport,
    sample: Tensor,
    swap_targets: Sequence[str] = (),
    *,
    run: Callable[[], object] | None = None,
) -> list[tuple[str, str, int]]:
    """Count, in a real forward pass on `sample` (train mode, then eval under no_grad), the
    activation ops of the replaced kinds that still run outside the activations actlab
    placed, and store them in ``report.remaining``. A builder's kinds: the rectifier
    family; a swap's: its targets (the rectifier family by default)."""
    names = [n for n in (swap_targets or RECTIFIERS)]
    classes = []
    for name in names:
        entry = _catalog_spec(name)
        if entry is not None and entry.torch_class:
            classes.append(entry.torch_class)
    run = run or (lambda: model(sample))
    report.remaining = remaining_after_swap(model, run, classes, placed_activations(model, report))
    return report.remaining


def _catalog_spec(name: str):
    try:
        return catalog.resolve(name)[0]
    except (catalog.UnknownActivationError, SpecError):
        return None


def describe(user: UserModel, activation: str, swap_targets: Sequence[str] = ()) -> str:
    """One line on what actlab does to the model: where each member's activation goes."""
    _, report = build_member(user, activation, 0, swap_targets)
    if user.kind == BUILDER:
        places = ", ".join(path for path, _ in report.modules)
        return f"model {user.reference} (builder): act() at {len(report.modules)} places ({places})"
    return f"model {user.reference} (nn.Module, seed 0, {activation}): {report.summary()}"


# Parameter counts further apart than this (relative) are said: not an equal-size comparison.
UNEQUAL_PARAMETERS = 0.02


def parameter_line(user: UserModel, activations: Sequence[str], swap_targets=()) -> str:
    """``parameters per member: relu 10,756, swiglu 10,772 (gated)``: each activation's
    network built for seed 0 (on the meta device where it builds there: nothing
    allocated). Counts further apart than UNEQUAL_PARAMETERS are said, with the way to
    equal ones (act.hidden)."""
    counts = {}
    for activation in activations:
        try:
            model, _ = build_member(user, activation, 0, swap_targets, device="meta")
        except ConfigError:
            raise
        except Exception:  # a builder that cannot build on meta
            model, _ = build_member(user, activation, 0, swap_targets)
        counts[activation] = sum(p.numel() for p in model.parameters())
    parts = [f"{a} {n:,}" + (" (gated)" if gated.is_gated(a) else "") for a, n in counts.items()]
    line = "parameters per member: " + ", ".join(parts)
    low, high = min(counts.values()), max(counts.values())
    if low and high / low - 1 > UNEQUAL_PARAMETERS:
        line += (
            f"; they differ by {high / low - 1:.0%}: not a comparison at equal parameters "
            "(a builder sizes a gated FFN with h = act.hidden(n) and act.inputs(h))"
        )
    return line


# === the model's own loss and metric ======================================================

OWN_METRICS = ("accuracy", "loss")


def own_loss(user: UserModel) -> Callable | None:
    """The model's own ``loss(output, target) -> scalar``: an attribute ``loss`` of the
    builder (``build.loss = F.mse_loss``) or of the module class (a ``@staticmethod``), or
    None. Called per member on that member's output and targets (actlab.engine.objective)."""
    loss = getattr(user.factory, "loss", None)
    if loss is None:
        return None
    if not callable(loss):
        raise ConfigError(
            f"--model {user.reference}: its `loss` attribute is a {type(loss).__name__}, not a "
            "function loss(output, target) -> scalar"
        )
    if inspect.isclass(user.factory) and "self" in _parameter_names(loss)[:1]:
        raise ConfigError(
            f"--model {user.reference}: its `loss` is a method taking self; make it a "
            "@staticmethod loss(output, target) -> scalar"
        )
    return loss


def own_objective(user: UserModel) -> dict[str, str]:
    """The config fields the model's own attributes ask for: ``loss="model"`` when it
    defines a loss, ``metric`` when it states one: "accuracy" or "loss" (the two columns of
    metrics.csv a study is compared on; a metric function of its own is not recorded)."""
    fields: dict[str, str] = {}
    if own_loss(user) is not None:
        fields["loss"] = "model"
    metric = getattr(user.factory, "metric", None)
    if metric is None:
        return fields
    if not (isinstance(metric, str) and metric in OWN_METRICS):
        raise ConfigError(
            f"--model {user.reference}: its `metric` attribute must name what compares the "
            f"members, {' or '.join(OWN_METRICS)} (the test loss), got {metric!r}; a metric "
            "function of its own is not supported"
        )
    fields["metric"] = metric
    return fields


def _parameter_names(fn: Callable) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []
