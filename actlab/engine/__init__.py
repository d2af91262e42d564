"""The engine: trains K members as one stacked model and yields epoch records; prints
nothing and writes nothing. Owns the trainer, the hand-written MLP step and its compiled C
kernels, the vmap stack of a user's model, memory sizing, thread choice, the diagnostics
(gradient norms, dead and saturated units) and the activation cost benchmark.

May import: `actlab.nn`, `actlab.data`, `actlab.catalog`, `actlab.config`, `actlab.errors`.
"""
