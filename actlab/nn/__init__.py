"""Networks: the built-in stacked nets (MLP, CNN), the user's own model (load, build,
swap activations), weight initialisation and the stacked optimizers.

May import: `actlab.catalog`, `actlab.config`, `actlab.errors`.
"""
