"""The catalog: every activation by name, as data, and what is known about each.

Owns the entries (formula, reference, parameters, Keras and PyTorch defaults), the
registry (`get`, `get_fn`, `register`), spec parsing (``leaky_relu(negative_slope=0.2)``,
``expr:...``), the safe expression language, the measured properties and the closed forms
(f and f') that the fused step compiles. Knows nothing of training.

May import: `actlab.errors` only.
"""

from actlab.catalog import gated as _gated  # noqa: E402, F401  (registers the gated entries)
