"""Swapping the activations of a user's network: modules, calls in forward, torch's layers.

`swap(model, new, old)` replaces, by fresh `new` activations:

- activation **modules** (any catalog class, found by walking ``named_children``); a module
  built in place (``nn.ReLU(inplace=True)``) is replaced by an in-place one, so a forward
  that relies on the side effect (``skip = h; self.act(h); out(h + skip)``) computes the same
  function (relu -> relu is the identity);
- the activation of **torch's own layers** that take one (``nn.TransformerEncoderLayer`` and
  ``nn.TransformerDecoderLayer``, ``activation="relu"`` or a module): it becomes a module,
  and the layer's fused inference fast path, which would bake the old activation back in
  (``activation_relu_or_gelu``), is switched off;
- **functional calls** in ``forward`` (``F.relu``, ``torch.relu``, ``x.relu()``, ...) by
  rewriting the module's ``torch.fx`` graph: each call becomes a call of a fresh activation
  submodule. Activation modules (the user's and the ones placed here) are fx leaves: an
  ``expr:2*relu(x)`` placed by the module pass is not traced through and swapped again.

Without `old`, only the **rectifier family** is replaced (relu, gelu, silu, ..., the
activations a network uses between layers). Sigmoid, hard-sigmoid and tanh modules are as
often gates (squeeze-excitation) or squashing outputs as activations: they are left alone,
and listed with the reason, unless named (``--swap sigmoid``). A forward fx cannot trace is
reported (with fx's reason), its children are rewritten one by one, and the builder form is
suggested. See torchvision's ``feature_extraction`` for the same walk over fx graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from actlab.catalog import lookup as catalog_lookup
from actlab.catalog import registry as catalog
from actlab.errors import ConfigError, SpecError

# The rectifier family: what a network uses between layers, swapped by default.
RECTIFIERS = frozenset(
    (
        "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu",
        "gelu_tanh", "silu", "mish", "hard_swish",
    )
)  # fmt: skip
# Functional calls swapped when no `old` is named: the rectifier family, whose calls are
# activations. sigmoid, tanh, softplus and the like are left alone by default: inside a
# forward they are as often gates or constraints (x * sigmoid(x), an LSTM's gates, a
# softplus-positive scale) as activations; name them (--swap tanh) to replace their calls.
DEFAULT_CALLS = frozenset(
    ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hard_swish")
)
GATE_REASON = "gates and squashing outputs are kept unless named"
# torch.nn layers whose activation is an argument, called as ``self.activation(x)``.
ACTIVATION_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class InPlace(nn.Module):
    """An activation without an in-place variant, applied in place: ``x <- f(x)``.

    ``f`` runs on a copy of x (its backward may need x), then the result is written into x,
    as ``nn.ReLU(inplace=True)`` does: code that keeps using x sees the new values, and
    autograd's version check guards a tensor some earlier op saved."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return x.copy_(self.inner(x.clone()))


def fresh_activation(spec: str, inplace: bool = False) -> nn.Module:
    """A new `spec` activation module; in place when `inplace` (the catalog's own in-place
    variant where it has one, else `InPlace`)."""
    entry, _ = catalog.resolve(spec)
    if entry.inplace:
        return catalog.get(spec, inplace=bool(inplace))
    module = catalog.get(spec)
    return InPlace(module) if inplace else module


def is_activation_module(module: nn.Module) -> bool:
    """Modules that are activations (never traced through by fx)."""
    return isinstance(module, catalog.Activation | InPlace) or (
        type(module).__module__ == "torch.nn.modules.activation"
    )


# === the report ==========================================================================


@dataclass
class SwapReport:
    """What `swap` replaced: modules (path, old kind) and calls (where, old call); the
    forwards it could not read (module, fx's reason); what it left alone (path, kind, why);
    and, once counted in a real forward pass (actlab.nn.census), the activation ops of the
    replaced kinds that still run (op, where, count)."""

    new: str
    modules: list[tuple[str, str]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)
    remaining: list[tuple[str, str, int]] = field(default_factory=list)
    ignored_arguments: list[str] = field(default_factory=list)  # a builder's act(...) kwargs

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
        """One line: ``replaced 5 activations by gelu: nn.ReLU x3 (stem.1, ...), F.relu() x2
        (...)``, then what was left alone and what still runs."""
        if self.modules and all(kind == "act()" for _, kind in self.modules) and not self.calls:
            where = ", ".join(path for path, _ in self.modules)
            text = f"{self.new} at {len(self.modules)} act() places ({where})"
        else:
            groups: dict[str, list[str]] = {}
            for path, kind in [*self.modules, *self.calls]:
                groups.setdefault(kind.split(" in ")[0], []).append(_where(path, kind))
            text = f"replaced {self.count} activation(s) by {self.new}: " + _grouped(groups)
        for module, reason in self.untraced:
            text += (
                f"; could not read {module}.forward ({reason}), so activation calls in it (if "
                "any) were not swapped: to be sure, give a builder that takes the activation"
            )
        if self.ignored_arguments:
            text += f"; act() ignored {', '.join(sorted(set(self.ignored_arguments)))}"
        return text + self.left_text() + self.remaining_text()

    def left_text(self) -> str:
        if not self.left:
            return ""
        by_reason: dict[str, dict[str, list[str]]] = {}
        for path, kind, why in self.left:
            by_reason.setdefault(why, {}).setdefault(kind, []).append(path)
        return "".join(f"; left alone ({why}): {_grouped(g)}" for why, g in by_reason.items())

    def remaining_text(self) -> str:
        """``; still running after the swap (counted in a forward pass): relu x2 (enc.0)``."""
        if not self.remaining:
            return ""
        groups: dict[str, list[str]] = {}
        for op, where, count in self.remaining:
            groups.setdefault(op, []).extend([where] * count)
        return "; still running after the swap (counted in a forward pass): " + _grouped(groups)


def _grouped(groups: dict[str, list[str]]) -> str:
    parts = []
    for kind, places in groups.items():
        unique = list(dict.fromkeys(places))
        shown = ", ".join(unique[:4]) + (", ..." if len(unique) > 4 else "")
        parts.append(f"{kind} x{len(places)} ({shown})")
    return "; ".join(parts)


def _where(path: str, kind: str) -> str:
    return kind.split(" in ", 1)[1] if " in " in kind else path


# === the entry points ====================================================================


def swap_activations(
    model: nn.Module,
    new: str,
    old: str | Sequence[str] | None = None,
    *,
    verbose: bool = True,
    example: Tensor | None = None,
) -> nn.Module:
    """Replace the activations of `model` by fresh `new` ones and return the model.

    `old`: names of the activations to replace (catalog names such as ``"relu"``, or the
    class name of your own activation module); None replaces the rectifier family
    (RECTIFIERS: modules, calls and the activation of torch's transformer layers) and
    leaves sigmoid/tanh-like modules alone (gates). Modules are replaced in place;
    functional calls in ``forward`` (``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``) through
    torch.fx, which returns an ``fx.GraphModule`` (the same parameters and buffers). Prints
    one line saying what was replaced and left alone (`verbose`); raises ConfigError when
    nothing was. `example`: an input batch; the activation ops of the replaced kinds that
    still run (inside code no swap can reach) are then counted in a forward pass on it, in
    train mode and in eval mode under no_grad, and said too.

        >>> net = actlab.swap_activations(Net(), "gelu", old="relu", example=x[:2])
    """
    swapped, report = swap(model, new, old)
    if example is not None:
        from actlab.nn.census import remaining_after_swap

        targets = Targets.of(swapped, old)
        modules = dict(swapped.named_modules())
        placed = [modules[path] for path in report.sites if path in modules]
        classes = [kind.removeprefix("nn.") for kind in targets.classes.values()]
        report.remaining = remaining_after_swap(swapped, lambda: swapped(example), classes, placed)
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
    placed: set[int] = set()
    model = _swap_modules(model, targets, new, "", report, placed)
    model = _rewrite_calls(model, targets, new, "", report, placed)
    if report.count == 0:
        what = "rectifier-family activation (relu, gelu, silu, ...)" if old is None else (
            ", ".join(targets.names)
        )  # fmt: skip
        why = ""
        if report.untraced:
            module, reason = report.untraced[0]
            why = f" (fx could not read {module}.forward: {reason})"
        name = reference or type(model).__name__
        left = report.left_text()
        hint = (
            f"; name the one to replace, e.g. --swap {_catalog_name(report.left[0][1])}"
            if report.left
            else "; give a builder that takes the activation instead (def build(act): ... act() ...)"
        )
        raise ConfigError(
            f"nothing to swap in {name}: found no {what} as a module or a call in forward"
            f"{why}{left}{hint}"
        )
    return model, report


def _catalog_name(kind: str) -> str:
    entry = _catalog_entry(kind.removeprefix("nn."))
    return entry.name if entry is not None else kind


# === what to replace =====================================================================


@dataclass
class Targets:
    """What to replace: module classes, functions (fx call_function targets) and Tensor
    method names, each with the name reported for it; and the catalog classes left alone."""

    names: tuple[str, ...]
    classes: dict[type, str]
    functions: dict[object, str]
    methods: dict[str, str]
    catalog_names: dict[str, str] = field(default_factory=dict)  # Activation.name -> label
    spared: dict[type, str] = field(default_factory=dict)  # catalog classes not replaced

    @classmethod
    def of(cls, model: nn.Module, old: str | Sequence[str] | None) -> Targets:
        if old is None:
            specs = [s for s in catalog.list_activations() if s.name in RECTIFIERS]
            names = tuple(s.name for s in specs)
        else:
            names = (old,) if isinstance(old, str) else tuple(old)
            specs = [spec for name in names if (spec := _named_target(name)) is not None]
        targets = cls(names, {}, {}, {})
        for spec in specs:
            targets._add_spec(spec, calls=old is not None or spec.name in DEFAULT_CALLS)
        for name in names:
            if old is not None and _catalog_entry(name) is None:
                targets._add_user_class(model, name)
        for spec in catalog.list_activations():
            klass = getattr(nn, spec.torch_class or "", None)
            if (
                spec.elementwise
                and klass is not None
                and klass not in targets.classes
                and spec.name not in ("linear", "identity")
            ):
                targets.spared[klass] = f"nn.{spec.torch_class}"
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


def _named_target(name: str) -> catalog.ActivationSpec | None:
    layer = getattr(nn, name, None)
    if (
        isinstance(layer, type)
        and issubclass(layer, nn.Module)
        and layer.__module__ != "torch.nn.modules.activation"
    ):
        raise ConfigError(
            f"swap target {name!r} is not an activation (torch.nn.{name} is a layer); name an "
            "activation such as relu"
        )
    spec = _catalog_entry(name)
    if spec is not None and not spec.elementwise:
        raise ConfigError(
            f"swap target {name!r} is not elementwise (it mixes units); swap an elementwise "
            "activation such as relu"
        )
    return spec


def _catalog_entry(name: str) -> catalog.ActivationSpec | None:
    try:
        spec, _ = catalog.resolve(name)
    except catalog.UnknownActivationError:
        return None
    except SpecError:  # an entry that needs parameters (softmax's dim): the entry itself
        spec, _ = catalog_lookup.find(name.split("(")[0].strip())
    return spec


# === modules =============================================================================


def _swap_modules(
    module: nn.Module, targets: Targets, new: str, path: str, report: SwapReport, placed: set
) -> nn.Module:
    kind = targets.matches_module(module)
    if kind is not None:
        report.modules.append((path or "(root)", kind))
        replacement = fresh_activation(new, inplace=bool(getattr(module, "inplace", False)))
        placed.add(id(replacement))
        return replacement
    spared = targets.spared.get(type(module))
    if spared is not None:
        report.left.append((path or "(root)", spared, GATE_REASON))
        return module
    if (
        isinstance(module, nn.RNNBase | nn.RNNCell)
        and getattr(module, "nonlinearity", "") == "relu"
    ):
        report.left.append((path, f"nn.{type(module).__name__}(nonlinearity='relu')",
                            "its activation runs inside a fused recurrent kernel"))  # fmt: skip
    for name, child in list(module.named_children()):
        replaced = _swap_modules(child, targets, new, _join(path, name), report, placed)
        if replaced is not child:
            setattr(module, name, replaced)
    if isinstance(module, ACTIVATION_LAYERS):
        _swap_layer_activation(module, targets, new, path, report, placed)
    return module


def _swap_layer_activation(
    layer: nn.Module, targets: Targets, new: str, path: str, report: SwapReport, placed: set
) -> None:
    """torch's transformer layers: ``activation="relu"`` (a function) becomes a module, and
    the fused fast path (relu or gelu baked in, eval mode under no_grad) is switched off."""
    activation = layer.activation
    if isinstance(activation, nn.Module):
        swapped = id(activation) in placed
    else:
        kind = targets.functions.get(activation) if callable(activation) else None
        swapped = kind is not None
        if swapped:
            module = fresh_activation(new)
            placed.add(id(module))
            layer.activation = module  # registered as a submodule: `path.activation`
            name = getattr(activation, "__name__", "activation")
            report.modules.append((_join(path, "activation"), f"{type(layer).__name__}"
                                   f"(activation='{name}')"))  # fmt: skip
    if swapped and hasattr(layer, "activation_relu_or_gelu"):
        layer.activation_relu_or_gelu = 0


# === calls in forward ====================================================================


class _Tracer(fx.Tracer):
    """torch.fx's tracer with every activation module a leaf: placed activations (an
    ``expr:`` whose formula calls relu included) are called, not traced through."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return is_activation_module(module) or super().is_leaf_module(module, qualified_name)


def _trace(module: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(module)
    name = module.__class__.__name__ if isinstance(module, nn.Module) else module.__name__
    return fx.GraphModule(tracer.root, graph, name)


def _rewrite_calls(
    module: nn.Module, targets: Targets, new: str, path: str, report: SwapReport, placed: set
) -> nn.Module:
    """Replace activation calls in `module`'s forward (and, when it traces, its children's)
    by submodules. Returns an fx.GraphModule when something was replaced, else `module`."""
    if _is_torch_leaf(module) or is_activation_module(module):
        return module
    try:
        graph_module = _trace(module)
    except Exception as error:  # fx raises many types for untraceable Python
        report.untraced.append((path or type(module).__name__, _trace_reason(error)))
        for name, child in list(module.named_children()):
            rewritten = _rewrite_calls(child, targets, new, _join(path, name), report, placed)
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
        graph_module.add_submodule(name, fresh_activation(new))
        placed.add(id(graph_module.get_submodule(name)))
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
    (the order of the diagnostics' layers). A module reused at several calls is one site."""
    wanted = set(report.sites)
    return [name for name, _ in model.named_modules() if name in wanted]
