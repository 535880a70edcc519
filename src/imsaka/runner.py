"""``imsaka run {hss|pcscf|icscf|scscf} -c imsaka.toml``: one network function per process.

The whole network is described by one TOML file (imsaka.config); this command starts the
function named on the command line with it and runs until SIGINT/SIGTERM. Each function
module exposes ``run(config) -> int``:

- ``imsaka.hss.server.run(raw_toml_dict)`` (the HSS reads its own ``[hss]`` section),
- ``imsaka.cscf.pcscf.run(ImsConfig)``, ``imsaka.cscf.icscf.run(ImsConfig)``,
  ``imsaka.cscf.scscf.run(ImsConfig)``.

With a metrics listener for the function (``[metrics]`` in the file, or ``--metrics
HOST:PORT``), the runner builds the function's server itself (the same class and
arguments its ``run`` uses), serves it the same way (same output lines, uvloop where
installed) and serves Prometheus metrics of that server beside it (`imsaka.metrics`),
printing ``FUNCTION metrics on http://HOST:PORT/metrics`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
from collections.abc import Awaitable, Callable
from typing import Any

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
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics here (overrides [metrics] of the file; port 0: any)",
    )
    p.add_argument(
        "--instance",
        type=int,
        default=1,
        metavar="N",
        help="scscf only: run instance N of the S-CSCF (2 and up: its [[scscf.instances]]; "
        "metrics then only with --metrics)",
    )
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from imsaka.config import load_config, parse_listen

    config = load_config(args.config)
    name = args.function
    if name != "hss" and getattr(config, name) is None:
        raise CliError(f"[{name}]: missing section in {args.config}")
    listen = config.metrics.listen(name)
    if args.instance != 1:
        if name != "scscf":
            raise CliError("--instance: only an S-CSCF runs as several instances")
        try:
            config = dataclasses.replace(config, scscf=config.scscf.instance(args.instance))
        except ValueError as exc:
            raise CliError(str(exc)) from None
        listen = None  # ([metrics].scscf is instance 1's address)
    field = f"[metrics].{name}"
    if args.metrics is not None:
        listen, field = parse_listen(args.metrics, "--metrics"), "--metrics"
    if listen is not None:
        return _run_with_metrics(name, config, listen, field)
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
    # Every function on uvloop where installed (the ``fast`` extra), whether or not its
    # own ``run`` installs it: the same event loop with and without metrics.
    from imsaka.cscf._serve import use_uvloop

    use_uvloop()
    if name == "hss":
        return int(run(dict(config.raw)) or 0)
    return int(run(config) or 0)


def _run_with_metrics(name: str, config: Any, listen: tuple[str, int], field: str) -> int:
    """Serve function `name` until SIGINT/SIGTERM with metrics on `listen` (from `field`)."""
    from imsaka.cscf._serve import serve_forever, use_uvloop
    from imsaka.metrics import serve_with_metrics

    def announce(line: str) -> None:
        print(line, flush=True)

    server: Any
    serve: Callable[[], Awaitable[int]]
    if name == "hss":
        from imsaka.hss.config import parse_hss_config
        from imsaka.hss.server import HssServer
        from imsaka.hss.server import serve as serve_hss

        hss_config = parse_hss_config(dict(config.raw), base_dir=None)
        server = HssServer(hss_config)

        def serve() -> Awaitable[int]:
            return serve_hss(server, hss_config)
    else:
        if name == "pcscf":
            from imsaka.cscf.pcscf_server import PcscfServer

            server = PcscfServer(config.pcscf, config.network)
        elif name == "icscf":
            from imsaka.cscf.icscf import IcscfServer

            server = IcscfServer(config.icscf, config.network)
        else:
            from imsaka.cscf.scscf import ScscfServer

            server = ScscfServer(config.scscf, network=config.network)

        def serve() -> Awaitable[int]:
            return serve_forever(server, name)

    use_uvloop()
    return asyncio.run(
        serve_with_metrics(name, server, listen, serve, announce=announce, field=field)
    )
