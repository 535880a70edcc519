"""``imsaka ue register -c ue.toml``: register a simulated UE with any P-CSCF.

Runs the two-phase IMS AKA registration of TS 24.229 §5.1.1 (phase 1 in the clear,
AUTN checked by the ISIM, SAs per TS 33.203 §7, phase 2 over ESP) and prints the
outcome: the granted expiry, Service-Route and P-Associated-URI of the 200 OK, or why
it failed ("network authentication failed" when AUTN's MAC is wrong). ``--stay``
keeps the registration for that many seconds, then de-registers (over the SAs).
While it stays, the UE's reg-event subscription (TS 24.229 §5.1.1.3; ``[ue]
subscribe_reg_event``) tells it of a network-initiated de-registration (§5.1.1.7),
printed as "network-initiated de-registration (<event>)"; after ``rejected`` it stays
de-registered, after ``deactivated`` it registers again. While it stays it also keeps
itself registered as a phone does: a refresh that fails is followed by an initial
registration (TS 24.229 §5.1.1.4.1), and an attempt that fails for a reason that may
pass (no answer, 5xx) by another one after RFC 5626 §4.5's back-off (``[ue]
recovery_base_time``, 30 s unless the file sets it; ``recovery_max_time``, 1800 s).
Exit status 0 when registered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from imsaka.clierror import CliError

__all__ = ["register"]

# RFC 5626 §4.5's base-time when every flow failed: a UE that stays registered tries
# again after 30–60 s, then 60–120 s, ... up to `recovery_max_time`.
STAY_RECOVERY_BASE_TIME = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    ue = subparsers.add_parser(
        "ue", help="UE simulator", description="Simulated IMS UE (ISIM, IMS AKA, IPsec)."
    )
    sub = ue.add_subparsers(dest="ue_command", metavar="ACTION")
    p = sub.add_parser(
        "register",
        help="register a UE (ue.toml) with a P-CSCF",
        description="Register the UE described by ue.toml with its P-CSCF (IMS AKA, IPsec ESP).",
    )
    p.add_argument("-c", "--config", required=True, help="UE settings (TOML, see imsaka.ue.config)")
    p.add_argument("--pcscf", metavar="HOST:PORT", help="override the P-CSCF address of the file")
    p.add_argument(
        "--timeout", type=float, default=40.0, help="seconds to wait for the registration"
    )
    p.add_argument(
        "--stay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stay registered, then de-register",
    )
    p.add_argument("--esp-keys", metavar="FILE", help="write the UE's Wireshark esp_sa key file")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=_cmd_register)
    ue.set_defaults(func=lambda args: (ue.print_help(), 2)[1])


def _cmd_register(args: argparse.Namespace) -> int:
    from imsaka.ue.config import load_ue_config, parse_hostport

    config = load_ue_config(args.config)
    if args.pcscf:
        config.pcscf = parse_hostport(args.pcscf, "--pcscf")
    if args.timeout <= 0:
        raise CliError("--timeout: must be positive")
    if args.stay < 0:
        raise CliError("--stay: must not be negative")
    if args.stay > 0 and config.recovery_base_time is None:
        config.recovery_base_time = STAY_RECOVERY_BASE_TIME
    return asyncio.run(_register(config, args))


async def _register(config, args: argparse.Namespace) -> int:
    from imsaka.ue.client import UeClient

    try:
        client = UeClient(config, key_file=args.esp_keys)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        await client.start()
    except OSError as exc:
        raise CliError(f"local_host/local_port: cannot bind: {exc.strerror or exc}") from None
    from imsaka.ue.core import (
        NetworkDeregistered,
        RecoveryScheduled,
        Registered,
        RegisteringAnew,
        RegistrationFailed,
        UeState,
    )

    lost = False  # since the last registration: printed when the UE is back
    registered_once = False  # failures before the first registration print once, below

    def on_event(event) -> None:
        nonlocal lost
        if args.json:
            return
        if isinstance(event, Registered) and lost and event.expires > 0:
            lost = False
            print(f"registered again for {event.expires} s", flush=True)
        elif isinstance(event, NetworkDeregistered):
            print(str(event) + (": registering again" if event.reregistering else ""))
        elif isinstance(event, RegisteringAnew):
            lost = True
            print(f"{event.what} ({event.reason}): registering anew", flush=True)
        elif isinstance(event, RegistrationFailed) and registered_once:
            print(f"registration failed: {event.reason}", flush=True)
        elif isinstance(event, RecoveryScheduled):
            lost = True
            print(f"registering again in {event.after:.0f} s", flush=True)

    client.on_event = on_event
    try:
        result = await client.register(timeout=args.timeout)
        registered_once = result.ok
        if not args.json:
            _print_registration(config, result)
        dereg = None
        if result.ok and args.stay > 0:
            await asyncio.sleep(args.stay)
            if client.core is not None and client.core.state is UeState.REGISTERED:
                dereg = await client.deregister(timeout=args.timeout)
    finally:
        await client.close()
    if args.json:
        out = {
            "registered": result.ok,
            "status": result.status,
            "reason": result.reason,
            "expires": result.expires,
            "protected": result.protected,
            "service_route": list(result.service_route),
            "p_associated_uri": list(result.associated_uris),
        }
        if dereg is not None:
            out["deregistered"] = dereg.ok
        if client.network_event:
            out["network_deregistered"] = client.network_event
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    elif dereg is not None:
        print(
            "de-registered"
            if dereg.ok
            else f"de-registration failed: {dereg.status} {dereg.reason}"
        )
    return 0 if result.ok else 1


def _print_registration(config, result) -> None:
    # Printed as soon as it is known: what happens while the UE stays comes after it.
    if result.ok:
        print(
            f"registered {config.impu} for {result.expires} s"
            + (" over IPsec ESP" if result.protected else " (no IPsec)"),
            flush=True,
        )
        for route in result.service_route:
            print(f"  Service-Route: {route}")
        for uri in result.associated_uris:
            print(f"  P-Associated-URI: {uri}", flush=True)
    else:
        print(f"registration failed: {result.reason}", file=sys.stderr)
