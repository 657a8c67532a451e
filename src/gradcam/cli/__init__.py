"""The ``gradcam`` command line: argument parsing only; the library does the work.

Each sub-command is a module in this package that defines ``COMMAND`` (its name), ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules are discovered, so a
new command is one new file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType


def _commands() -> dict[str, ModuleType]:
    commands = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "COMMAND"):
            commands[module.COMMAND] = module
    return dict(sorted(commands.items()))


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per discovered command."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="gradcam", description="Visual explanations for PyTorch vision models.")
    parser.add_argument("--version", action="version", version=f"gradcam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _commands().items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradcam`` executable."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from ..runtime import keep_freed_memory
    from ._common import CLIError

    keep_freed_memory()  # our own process: reuse freed activations instead of page-faulting them back in

    try:
        return int(args._run(args) or 0)
    except CLIError as error:
        print(f"gradcam: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
