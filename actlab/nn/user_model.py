"""The user's own network: load it by reference, build it per member, swap its activations.

A model reference is ``FILE.py:NAME`` or ``module.path:NAME``. NAME is either

- a **builder**: a callable with one required argument, the activation factory ``act``
  (``act()`` returns a fresh activation module: timm's ``act_layer`` convention), or
- a **module**: an ``nn.Module`` class or a zero-argument factory; its activations are
  swapped for each member's (`swap`).

Each member's network is built after ``torch.manual_seed(seed)`` (inside a forked RNG,
so the caller's global RNG is untouched): its initial weights are exactly those the user
gets building it alone with that seed.

Swapping replaces activation *modules* (any catalog class, found by walking
``named_children``) and *functional calls* in ``forward`` (``F.relu``, ``torch.relu``,
``x.relu()``, ``F.gelu``, ...) by rewriting the module's ``torch.fx`` graph: each call
becomes a call of a fresh activation submodule. A forward that fx cannot trace is reported
(with fx's reason), its children are rewritten one by one, and the builder form is
suggested. See torchvision's ``feature_extraction`` for the same walk over fx graphs.
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
import torch.nn.functional as F
from torch import fx, nn

from actlab.catalog import lookup as catalog_lookup
from actlab.catalog import registry as catalog
from actlab.errors import ConfigError, SpecError

if TYPE_CHECKING:
    from actlab.config import ExperimentConfig

BUILDER = "builder"
MODULE = "module"

# Functional calls swapped when no `old` is named: the rectifier family, whose calls are
# activations. sigmoid, tanh, softplus and the like are left alone by default: inside a
# forward they are as often gates or constraints (x * sigmoid(x), an LSTM's gates, a
# softplus-positive scale) as activations; name them (--swap tanh) to replace their calls.
DEFAULT_CALLS = frozenset(
    ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hard_swish")
)


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


def build_member(
    user: UserModel, activation: str, seed: int, swap_targets: Sequence[str] = ()
) -> tuple[nn.Module, SwapReport]:
    """Member (activation, seed) of a study: the user's network built after
    ``torch.manual_seed(seed)``, with `activation` everywhere (passed to the builder, or
    swapped in for `swap_targets`). Returns the network and what was put where."""
    made: list[nn.Module] = []

    def act() -> nn.Module:
        module = _fresh(activation)
        made.append(module)
        return module

    with torch.random.fork_rng(devices=[]):
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
        report = SwapReport(new=activation)
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


def describe(user: UserModel, activation: str, swap_targets: Sequence[str] = ()) -> str:
    """One line on what actlab does to the model: where each member's activation goes."""
    _, report = build_member(user, activation, 0, swap_targets)
    if user.kind == BUILDER:
        places = ", ".join(path for path, _ in report.modules)
        return f"model {user.reference} (builder): act() at {len(report.modules)} places ({places})"
    return f"model {user.reference} (nn.Module, seed 0, {activation}): {report.summary()}"


def _fresh(spec: str) -> nn.Module:
    """A new activation module, never in place (members share views of stacked tensors)."""
    entry, params = catalog.resolve(spec)
    if params.get("inplace"):
        return catalog.get(spec, inplace=False)
    return catalog.get(spec)


# === swapping ============================================================================


@dataclass
class SwapReport:
    """What `swap` replaced: modules (path, old kind) and calls (where, old call), and the
    forwards it could not read (module, fx's reason)."""

    new: str
    modules: list[tuple[str, str]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.modules) + len(self.calls)

    @property
    def sites(self) -> list[str]:
        """Module paths of the new activations in the swapped model, in model order."""
        return [path for path, _ in self.modules] + [
            path for path, _ in self.calls if not path.startswith("(")
        ]

    def counts(self) -> dict[str, int]:
        """How many of each kind were replaced, e.g. {"nn.ReLU": 3, "F.relu()": 1}."""
        out: dict[str, int] = {}
        for _, kind in [*self.modules, *self.calls]:
            kind = kind.split(" in ")[0]
            out[kind] = out.get(kind, 0) + 1
        return out

    def summary(self) -> str:
        """One line: ``replaced 5 activations by gelu: nn.ReLU x3 (stem.1, ...), F.relu() x2 (...)``."""
        if self.modules and all(kind == "act()" for _, kind in self.modules) and not self.calls:
            where = ", ".join(path for path, _ in self.modules)
            return f"{self.new} at {len(self.modules)} act() places ({where})"
        parts = []
        groups: dict[str, list[str]] = {}
        for path, kind in [*self.modules, *self.calls]:
            groups.setdefault(kind.split(" in ")[0], []).append(_where(path, kind))
        for kind, places in groups.items():
            shown = ", ".join(places[:4]) + (", ..." if len(places) > 4 else "")
            parts.append(f"{kind} x{len(places)} ({shown})")
        text = f"replaced {self.count} activation(s) by {self.new}: " + "; ".join(parts)
        for module, reason in self.untraced:
            text += (
                f"; could not read {module}.forward ({reason}), so activation calls in it (if "
                "any) were not swapped: to be sure, give a builder that takes the activation"
            )
        return text


def _where(path: str, kind: str) -> str:
    return kind.split(" in ", 1)[1] if " in " in kind else path


def swap_activations(
    model: nn.Module, new: str, old: str | Sequence[str] | None = None, *, verbose: bool = True
) -> nn.Module:
    """Replace the activations of `model` by fresh `new` ones and return the model.

    `old`: names of the activations to replace (catalog names such as ``"relu"``, or the
    class name of your own activation module); None replaces every elementwise catalog
    activation module found, and the calls of the rectifier family (DEFAULT_CALLS). Modules are replaced in place; functional calls in ``forward``
    (``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``) through torch.fx, which returns an
    ``fx.GraphModule`` (the same parameters and buffers). Prints one line saying what was
    replaced (`verbose`); raises ConfigError when nothing was.

        >>> net = actlab.swap_activations(Net(), "gelu", old="relu")
    """
    swapped, report = swap(model, new, old)
    if verbose:
        print(report.summary())
    return swapped


def swap(
    model: nn.Module,
    new: str,
    old: str | Sequence[str] | None = None,
    *,
    reference: str | None = None,
) -> tuple[nn.Module, SwapReport]:
    """`swap_activations` without printing: the swapped model and its SwapReport."""
    catalog.resolve(new)  # a misspelt new activation fails with the nearest names
    targets = Targets.of(model, old)
    report = SwapReport(new=new)
    model = _swap_modules(model, targets, new, "", report)
    model = _rewrite_calls(model, targets, new, "", report)
    if report.count == 0:
        what = "any catalog activation" if old is None else ", ".join(targets.names)
        why = ""
        if report.untraced:
            module, reason = report.untraced[0]
            why = f" (fx could not read {module}.forward: {reason})"
        name = reference or type(model).__name__
        raise ConfigError(
            f"nothing to swap in {name}: found no {what} as a module or a call in forward{why}; "
            "give a builder that takes the activation instead (def build(act): ... act() ...)"
        )
    return model, report


@dataclass
class Targets:
    """What to replace: module classes, functions (fx call_function targets) and Tensor
    method names, each with the name reported for it."""

    names: tuple[str, ...]
    classes: dict[type, str]
    functions: dict[object, str]
    methods: dict[str, str]
    catalog_names: dict[str, str] = field(default_factory=dict)  # Activation.name -> label

    @classmethod
    def of(cls, model: nn.Module, old: str | Sequence[str] | None) -> Targets:
        if old is None:
            specs = [s for s in catalog.list_activations() if _default_target(s)]
            names = tuple(s.name for s in specs)
        else:
            names = (old,) if isinstance(old, str) else tuple(old)
            specs = []
            for name in names:
                layer = getattr(nn, name, None)
                if (
                    isinstance(layer, type)
                    and issubclass(layer, nn.Module)
                    and layer.__module__ != "torch.nn.modules.activation"
                ):
                    raise ConfigError(
                        f"swap target {name!r} is not an activation (torch.nn.{name} is a "
                        "layer); name an activation such as relu"
                    )
                spec = _catalog_entry(name)
                if spec is None:
                    continue
                if not spec.elementwise:
                    raise ConfigError(
                        f"swap target {name!r} is not elementwise (it mixes units); swap an "
                        "elementwise activation such as relu"
                    )
                specs.append(spec)
        targets = cls(names, {}, {}, {})
        for spec in specs:
            targets._add_spec(spec, calls=old is not None or spec.name in DEFAULT_CALLS)
        for name in names:
            if old is not None and _catalog_entry(name) is None:
                targets._add_user_class(model, name)
        return targets

    def _add_spec(self, spec: catalog.ActivationSpec, *, calls: bool = True) -> None:
        if spec.torch_class:
            self.classes[getattr(nn, spec.torch_class)] = f"nn.{spec.torch_class}"
        self.catalog_names[spec.name] = spec.name
        if not calls:
            return
        fn = spec.fn
        fn_name = getattr(fn, "__name__", None)
        if getattr(nn.functional, fn_name or "", None) is fn:
            self.functions[fn] = f"F.{fn_name}()"
        elif getattr(torch, fn_name or "", None) is fn:
            self.functions[fn] = f"torch.{fn_name}()"
        if not fn_name or not spec.torch_class:
            return
        for variant in (fn_name, fn_name + "_"):
            for namespace, label in ((F, "F"), (torch, "torch"), (torch.special, "torch.special")):
                function = getattr(namespace, variant, None)
                if callable(function):
                    self.functions.setdefault(function, f"{label}.{variant}()")
            if hasattr(torch.Tensor, variant):
                self.methods[variant] = f"x.{variant}()"

    def _add_user_class(self, model: nn.Module, name: str) -> None:
        found = {type(m): m for m in model.modules() if type(m).__name__ == name}
        if not found:
            raise ConfigError(
                f"swap target {name!r} is neither a catalog activation nor a module class in "
                "the model; see `actlab list`, or name your activation's class"
            )
        for klass, instance in found.items():
            layer = klass.__module__.startswith("torch.nn") or any(
                p.dim() > 1 for p in instance.parameters()
            )
            if layer:
                raise ConfigError(
                    f"swap target {name!r} is not an activation (a {klass.__name__} layer with "
                    "weights); name an activation such as relu"
                )
            self.classes[klass] = klass.__name__

    def matches_module(self, module: nn.Module) -> str | None:
        kind = self.classes.get(type(module))
        if kind is not None:
            return kind
        if isinstance(module, catalog.Activation) and module.name in self.catalog_names:
            return module.name
        return None


def _catalog_entry(name: str) -> catalog.ActivationSpec | None:
    try:
        spec, _ = catalog.resolve(name)
    except catalog.UnknownActivationError:
        return None
    except SpecError:  # an entry that needs parameters (softmax's dim): the entry itself
        spec, _ = catalog_lookup.find(name.split("(")[0].strip())
    return spec


def _default_target(spec: catalog.ActivationSpec) -> bool:
    """Swapped by default: elementwise catalog activations other than the identity."""
    return spec.elementwise and spec.name not in ("linear", "identity") and bool(spec.torch_class)


def _swap_modules(
    module: nn.Module, targets: Targets, new: str, path: str, report: SwapReport
) -> nn.Module:
    kind = targets.matches_module(module)
    if kind is not None:
        report.modules.append((path or "(root)", kind))
        return _fresh(new)
    for name, child in list(module.named_children()):
        replaced = _swap_modules(child, targets, new, _join(path, name), report)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _rewrite_calls(
    module: nn.Module, targets: Targets, new: str, path: str, report: SwapReport
) -> nn.Module:
    """Replace activation calls in `module`'s forward (and, when it traces, its children's)
    by submodules. Returns an fx.GraphModule when something was replaced, else `module`."""
    if _is_torch_leaf(module):
        return module
    try:
        graph_module = fx.symbolic_trace(module)
    except Exception as error:  # fx raises many types for untraceable Python
        report.untraced.append((path or type(module).__name__, _trace_reason(error)))
        for name, child in list(module.named_children()):
            rewritten = _rewrite_calls(child, targets, new, _join(path, name), report)
            if rewritten is not child:
                setattr(module, name, rewritten)
        return module
    graph = graph_module.graph
    replaced = 0
    for node in list(graph.nodes):
        kind = _call_kind(node, targets)
        if kind is None or not node.args:
            continue
        name = f"actlab_act_{replaced}"
        while hasattr(graph_module, name):
            name += "_"
        graph_module.add_submodule(name, _fresh(new))
        source = node.args[0]
        with graph.inserting_after(node):
            new_node = graph.call_module(name, (source,))
        node.replace_all_uses_with(new_node)
        if _in_place(node):
            # x.relu_() changes x itself: later readers of x must read the new value.
            _redirect_later_uses(graph, source, new_node)
        graph.erase_node(node)
        where = _node_module(node) or path or "forward"
        report.calls.append((_join(path, name), f"{kind} in {where}"))
        replaced += 1
    if not replaced:
        return module
    graph.lint()
    graph_module.recompile()
    return graph_module


def _call_kind(node: fx.Node, targets: Targets) -> str | None:
    if node.op == "call_function":
        try:
            return targets.functions.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return targets.methods.get(node.target)
    return None


def _in_place(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", node.target)
    if isinstance(name, str) and name.endswith("_") and not name.endswith("__"):
        return True
    if node.kwargs.get("inplace") is True:
        return True
    return len(node.args) > 1 and node.args[-1] is True


def _redirect_later_uses(graph: fx.Graph, source: fx.Node, replacement: fx.Node) -> None:
    after = False
    for node in graph.nodes:
        if node is replacement:
            after = True
            continue
        if after and source in node.all_input_nodes:
            node.replace_input_with(source, replacement)


def _node_module(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        path = last[0] if isinstance(last, tuple) else None
        if isinstance(path, str) and path:
            return path
    return None


def _is_torch_leaf(module: nn.Module) -> bool:
    """torch.nn's own layers (Conv2d, BatchNorm2d, ...): nothing of the user's to rewrite."""
    return type(module).__module__.startswith("torch.nn") and not isinstance(
        module, nn.Sequential | nn.ModuleList | nn.ModuleDict
    )


def _trace_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    if "symbolically traced variables cannot be used as inputs to control flow" in reason:
        reason = "data-dependent Python control flow"
    return reason[:160]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def activation_sites(model: nn.Module, report: SwapReport) -> list[str]:
    """Module paths of the activations actlab put in `model`, in ``named_modules`` order
    (the order of the diagnostics' layers)."""
    wanted = set(report.sites)
    return [name for name, _ in model.named_modules() if name in wanted]
