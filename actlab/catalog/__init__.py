"""The catalog: every activation by name, as data, and what is known about each.

Owns the entries (formula, reference, parameters, Keras and PyTorch defaults), the
registry (`get`, `get_fn`, `register`), spec parsing (``leaky_relu(negative_slope=0.2)``,
``expr:...``), the safe expression language, the measured properties and the closed forms
(f and f') that the fused step compiles. Knows nothing of training.

Its rooms, lowest first: `activation` (what an entry is), `functions` (forms torch lacks),
`entries` (the entries, as data: add an activation there), `gated` (the gated units of a
transformer FFN and squared ReLU, as data, with the FFN width rule), `lookup` (the name index),
`expr` (the safe expression language), `spec` (parsing and resolving specs), `registry`
(the public API: get, get_fn, register, list_activations), `properties` (measured),
`cache` (the per-installation disk cache of measured facts), `closed_forms`.

May import: `actlab.errors` only.
"""
