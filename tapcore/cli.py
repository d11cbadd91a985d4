"""The ``tapcore`` command line: every step of the app runs headless.

Subcommands live in ``tapcore/commands/<area>.py`` and are discovered here. Bad input raises
``ValueError`` in the library; the CLI prints it as one clear line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import tapcore
import tapcore.commands
from tapcore.access import AccessDenied
from tapcore.runtime import configure_process


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tapcore",
        description="Find cell divisions and deaths in live-cell movies with time arrow prediction (TAP) features.",
    )
    parser.add_argument("--version", action="version", version=f"tapcore {tapcore.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(tapcore.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"tapcore.commands.{info.name}")
        module.register(sub)
    return parser


def _resolve_shipped(args: argparse.Namespace) -> None:
    """``--model`` / ``--tap`` given as ``shipped:<name>`` (e.g. ``shipped:hela-nuclei``) -> the bundle folder."""
    from tapcore.workspace import shipped_model_path

    for attr in ("model", "tap"):
        value = getattr(args, attr, None)
        if isinstance(value, str) and value.startswith("shipped:"):
            setattr(args, attr, str(shipped_model_path(value.partition(":")[2])))


def main(argv: list[str] | None = None) -> int:
    configure_process()  # before any command imports torch

    from tapcore.utils import apply_umask_from_env

    try:
        apply_umask_from_env()  # $TAPCORE_UMASK (0002 in the image): the lab's group reads what we write
    except ValueError as exc:
        print(f"tapcore: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        _resolve_shipped(args)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, AccessDenied) as exc:
        print(f"tapcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tapcore {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
