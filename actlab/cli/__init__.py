"""The `actlab` command: parse the arguments, call one function of the layers below,
print the result. Holds no logic of its own.

main (the parser and the entry point), base (exit codes, one-line errors, help format),
options (argparse options generated from dataclass fields' metadata), and one module per
verb, each with its parser and its one handler: catalog (list, show, plot), datasets,
compare (+ progress: what it prints while training), report, export, bench.

May import: every other layer.
"""
