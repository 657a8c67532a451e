"""The ``gradcam`` command line: argument parsing only; the library does the work.

Each sub-command is a module in this package that defines ``COMMAND`` (its name), ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code), and optionally ``EPILOG`` (shown
after its options). Modules are discovered, so a new command is one new file.

Errors take one path: :func:`main` prints ``gradcam COMMAND: error: MESSAGE`` (one line, no traceback)
and returns the exit code. 2: the command line asks for something that cannot be done (a bad option
value, a missing or unreadable file, a model or layer that cannot be loaded or found: argparse's errors,
:class:`~._common.CLIError`, and the library's :class:`~gradcam.errors.GradCAMError`, which model
loading and image reading errors derive from). 1: the work started and failed (items or methods that
failed, outputs that could not be written: :class:`~._common.RunError`, ``OSError``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

EXIT_CODES = "Exit codes: 0 done, 1 the work failed, 2 a bad command line (nothing done)."


class _ParseError(Exception):
    """argparse's error, raised instead of exiting so that :func:`main` reports it like every other."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ParseError(self, message)


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

    parser = _Parser(prog="gradcam", description="Visual explanations for PyTorch vision models.")
    parser.add_argument("--version", action="version", version=f"gradcam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _commands().items():
        epilog = " ".join(part for part in (getattr(module, "EPILOG", ""), EXIT_CODES) if part)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog=epilog)
        module.add_arguments(command)
        command.set_defaults(_run=module.run, _parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradcam`` executable: the exit code (0 done, 1 failed, 2 bad usage)."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # reported by the command's parser, so that the message names the command
            getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extras)}")
    except _ParseError as error:
        error.parser.print_usage(sys.stderr)
        print(f"{error.parser.prog}: error: {error.message}", file=sys.stderr)
        return 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from ..errors import GradCAMError
    from ..runtime import keep_freed_memory
    from ._common import CLIError, error_message

    keep_freed_memory()  # our own process: reuse freed activations instead of page-faulting them back in

    code = 2
    try:
        return int(args._run(args) or 0)
    except CLIError as error:
        message, code = str(error), error.exit_code
    except GradCAMError as error:  # the library's errors are about its input: here, the command line's values
        message = error_message(error, args)
    except OSError as error:  # reading or writing failed while working (a full disk, a read-only folder, ...)
        message, code = str(error), 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"gradcam {args.command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
