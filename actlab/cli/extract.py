"""`actlab extract RUN --activation A --seed S [--lr LR] -o member.pt` (actlab.study.extract)."""

from __future__ import annotations

import argparse

from actlab.cli.base import EXIT_OK, add_command


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "extract",
        "Save one trained member of a run as the state dict of a plain nn.Module.",
        "  actlab extract runs/compare-stdlib --activation swiglu --seed 0 -o swiglu.pt\n"
        "  actlab extract runs/compare-fashion-mnist --activation relu --seed 1 --lr 1e-3 -o relu.pt\n",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--activation", required=True, help="the member's activation spec")
    p.add_argument("--seed", type=int, required=True, help="the member's seed")
    p.add_argument("--lr", type=float, default=None, help="the member's lr (when several)")
    p.add_argument("-o", "--output", default="member.pt", help="file to write (torch.save)")
    p.set_defaults(handler=cmd_extract)


def cmd_extract(args: argparse.Namespace) -> int:
    from actlab.study.extract import extract_member, save_member

    extracted = extract_member(args.run_dir, args.activation, args.seed, args.lr)
    path = save_member(extracted, args.output)
    member = extracted.member
    print(f"{member.label} after epoch {extracted.epoch} -> {path}")
    print(f"load it: module = {extracted.constructor}")
    print(f"         module.load_state_dict(torch.load({str(path)!r}))")
    return EXIT_OK
