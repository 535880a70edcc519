"""``imsaka run {hss|pcscf|icscf|scscf} -c imsaka.toml``: one network function per process.

The whole network is described by one TOML file (imsaka.config); this command starts the
function named on the command line with it and runs until SIGINT/SIGTERM. Each function
module exposes ``run(config) -> int``:

- ``imsaka.hss.server.run(raw_toml_dict)`` (the HSS reads its own ``[hss]`` section),
- ``imsaka.cscf.pcscf.run(ImsConfig)``, ``imsaka.cscf.icscf.run(ImsConfig)``,
  ``imsaka.cscf.scscf.run(ImsConfig)``.
"""

from __future__ import annotations

import argparse
import importlib

from imsaka.clierror import CliError

FUNCTIONS = ("hss", "pcscf", "icscf", "scscf")

# Where each function's ``run`` lives, first match wins (the P-CSCF keeps its sans-I/O
# core in pcscf.py and its asyncio edge in pcscf_server.py).
_ENTRY = {
    "hss": ("imsaka.hss.server",),
    "pcscf": ("imsaka.cscf.pcscf", "imsaka.cscf.pcscf_server"),
    "icscf": ("imsaka.cscf.icscf",),
    "scscf": ("imsaka.cscf.scscf",),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run one network function (hss, pcscf, icscf, scscf) from the whole-network TOML",
        description="Run one network function described by the whole-network TOML file.",
    )
    p.add_argument("function", choices=FUNCTIONS, help="the function to run")
    p.add_argument(
        "-c", "--config", default="imsaka.toml", help="whole-network TOML (default: imsaka.toml)"
    )
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from imsaka.config import load_config

    config = load_config(args.config)
    name = args.function
    if name != "hss" and getattr(config, name) is None:
        raise CliError(f"[{name}]: missing section in {args.config}")
    run = None
    for module_name in _ENTRY[name]:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        run = getattr(module, "run", None)
        if run is not None:
            break
    if run is None:
        where = " or ".join(_ENTRY[name])
        raise CliError(f"{name}: not available in this build (no run(config) in {where})")
    if name == "hss":
        return int(run(dict(config.raw)) or 0)
    return int(run(config) or 0)
