"""``gradcam models``: the models that can be loaded here."""

from __future__ import annotations

import argparse

from ..models import list_models

COMMAND = "models"
HELP = "list the models gradcam can load on this machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="also list models whose weights are not available here")


def run(args: argparse.Namespace) -> int:
    rows = [row for row in list_models() if args.all or row["available"]]
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        mark = "yes" if row["available"] else "no "
        print(f"{row['name']:<{width}}  {mark}  {row['note']}")
    if not args.all:
        print("(--all also lists torchvision models whose weights are not cached here)")
    return 0
