"""The `imsaka` command line: one subcommand per job, each defined in its own module.

Each module listed in `COMMAND_MODULES` has ``register(subparsers)``, which adds its
subcommand(s) with ``set_defaults(func=handler)``; a handler takes the parsed
arguments and returns an exit code. Heavy imports (SQLAlchemy, FastAPI, asyncio
servers) happen inside handlers, so ``imsaka aka vector`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from imsaka import __version__
from imsaka.clierror import CliError

COMMAND_MODULES = (
    "imsaka.demo",  # imsaka demo
    "imsaka.aka.cli",  # imsaka aka ...
    "imsaka.hss.cli",  # imsaka hss ...
    "imsaka.runner",  # imsaka run {hss|pcscf|icscf|scscf}
    "imsaka.lab",  # imsaka lab
    "imsaka.ue.cli",  # imsaka ue ...
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imsaka",
        description="IMS core (HSS, P-CSCF, I-CSCF, S-CSCF) and UE simulator with IMS AKA and IPsec.",
    )
    parser.add_argument("--version", action="version", version=f"imsaka {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command whose module is not written yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        _configure_logging(args.verbose)
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"imsaka: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _configure_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
