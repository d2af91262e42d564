"""The `actlab` command: parse the arguments, call one function of the layers below,
print the result. Holds no logic of its own.

May import: every other layer.
"""
