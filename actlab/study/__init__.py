"""Studies: the driver that turns a config into trained members (locally or on Ray), the
run directory store (its sole reader and writer; resumable, append-only) and the logic of
unfinished runs.

May import: `actlab.engine` and everything below it.
"""
