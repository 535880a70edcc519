"""``imsaka hss …``: provisioning of the HSS subscriber store (TS 29.228 data).

Subcommands::

    imsaka hss add-subscriber --impi I --impu U [--impu U] --k HEX (--op|--opc) HEX
                              [--amf HEX] [--sqn HEX] [--scheme S]... [--password P]
    imsaka hss import FILE.csv           # header impi,impu,k,op,opc,amf[,sqn]; all or nothing
    imsaka hss show IMPI [--json]        # never prints K, OP or OPc
    imsaka hss delete IMPI               # through the API when one is configured (sends RTR)
    imsaka hss deregister IMPU|IMPI      # through the running HSS's REST API (sends RTR):
                                         # an IMPU's implicit set, or an IMPI's whole subscription

Where the store is: ``--db URL``, else ``[hss].database`` of ``-c imsaka.toml`` (when
that file exists), else ``$IMSAKA_HSS_DB``, else ``sqlite:///imsaka.db``. The running
HSS's API: ``--api URL`` and ``--token`` (or ``$IMSAKA_HSS_API_TOKEN``), else
``[hss].api_*`` of the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from imsaka.clierror import CliError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "hss",
        help="provision the HSS (subscribers, CSV import, de-registration)",
        description="Provision the HSS subscriber store.",
    )
    sub = p.add_subparsers(dest="hss_command", metavar="ACTION", parser_class=type(p))

    def common(sp: argparse.ArgumentParser, api: bool = False) -> None:
        sp.add_argument(
            "--db", help="database URL (sqlite:///file.db or postgresql://user@host/db)"
        )
        sp.add_argument(
            "-c",
            "--config",
            default="imsaka.toml",
            help="whole-network TOML (default: imsaka.toml)",
        )
        if api:
            sp.add_argument("--api", help="REST API of the running HSS, e.g. http://127.0.0.1:8080")
            sp.add_argument(
                "--token", help="bearer token of that API (default $IMSAKA_HSS_API_TOKEN)"
            )

    a = sub.add_parser("add-subscriber", help="add one subscriber (IMPI with its IMPUs)")
    a.add_argument("--impi", required=True, help="private identity, user@realm")
    a.add_argument(
        "--impu", action="append", required=True, help="public identity (sip: or tel: URI); repeat"
    )
    a.add_argument("--k", required=True, help="K, 32 hex digits")
    group = a.add_mutually_exclusive_group(required=True)
    group.add_argument("--op", help="OP, 32 hex digits (OPc is derived and stored)")
    group.add_argument("--opc", help="OPc, 32 hex digits")
    a.add_argument("--amf", help="AMF, 4 hex digits (default 8000)")
    a.add_argument("--sqn", help="initial SQN_HE, up to 12 hex digits (default 0)")
    a.add_argument("--scheme", action="append", help="allowed SIP-Authentication-Scheme; repeat")
    a.add_argument("--password", help="SIP Digest password (with --scheme 'SIP Digest')")
    a.add_argument("--barred", action="append", help="an IMPU to bar; repeat")
    a.add_argument("--ifc-file", help="file with InitialFilterCriteria XML for the service profile")
    a.add_argument(
        "--visited-network", action="append", help="visited network this user may roam to"
    )
    common(a)
    a.set_defaults(func=_add)

    i = sub.add_parser("import", help="bulk import from CSV (all rows or none)")
    i.add_argument(
        "file", help="CSV with header impi,impu,k,op,opc,amf[,sqn]; IMPUs separated by |"
    )
    common(i)
    i.set_defaults(func=_import)

    s = sub.add_parser("show", help="show a subscriber (never K, OP or OPc)")
    s.add_argument("impi")
    s.add_argument("--json", action="store_true", help="print JSON")
    common(s)
    s.set_defaults(func=_show)

    d = sub.add_parser(
        "delete", help="delete a subscriber (RTR first when a running HSS is reachable)"
    )
    d.add_argument("impi")
    common(d, api=True)
    d.set_defaults(func=_delete)

    r = sub.add_parser(
        "deregister",
        help="administratively de-register an IMPU's implicit set, or with an IMPI its "
        "whole subscription (the HSS sends RTR)",
    )
    r.add_argument(
        "identity",
        metavar="IMPU|IMPI",
        help="an IMPU (sip:/tel: URI) ends its implicit set; an IMPI (user@realm) every "
        "registration of its subscription",
    )
    r.add_argument("--reason", help="Reason-Info text for the RTR")
    r.add_argument(
        "--server-change",
        action="store_true",
        help="Reason-Code SERVER_CHANGE: the UE is asked to register again (default: "
        "PERMANENT_TERMINATION, it is not)",
    )
    common(r, api=True)
    r.set_defaults(func=_deregister)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# ----------------------------------------------------------------------------- helpers


def _config(args: argparse.Namespace) -> dict[str, Any] | None:
    path = Path(args.config)
    if not path.exists():
        if args.config != "imsaka.toml":
            raise CliError(f"--config: {args.config} not found")
        return None
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"--config: cannot read {args.config}: {exc}") from None


def _db_url(args: argparse.Namespace) -> str:
    if args.db:
        return args.db
    cfg = _config(args)
    if cfg and isinstance(cfg.get("hss"), dict) and isinstance(cfg["hss"].get("database"), str):
        return cfg["hss"]["database"]
    return os.environ.get("IMSAKA_HSS_DB") or "sqlite:///imsaka.db"


def _api(args: argparse.Namespace) -> tuple[str, str] | None:
    token = args.token or os.environ.get("IMSAKA_HSS_API_TOKEN")
    if args.api:
        if not token:
            raise CliError("--token: the HSS API needs a bearer token (or $IMSAKA_HSS_API_TOKEN)")
        return args.api.rstrip("/"), token
    cfg = _config(args)
    if not cfg or not isinstance(cfg.get("hss"), dict):
        return None
    from imsaka.hss.config import parse_hss_config

    try:
        hcfg = parse_hss_config(cfg, base_dir=Path(args.config).resolve().parent)
    except CliError:
        return None
    if not hcfg.api_port or not (token or hcfg.api_token):
        return None
    return hcfg.api_url(), token or hcfg.api_token  # type: ignore[return-value]


def _call_api(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import httpx

    try:
        resp = httpx.request(
            method, base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=15
        )
    except httpx.HTTPError as exc:
        raise CliError(f"--api: cannot reach the HSS at {base}: {type(exc).__name__}") from None
    try:
        data = resp.json()
    except ValueError:
        data = resp.text
    if resp.status_code == 401:
        raise CliError("--token: the HSS refused the bearer token")
    return resp.status_code, data


def _detail(data: Any) -> str:
    detail = data.get("detail") if isinstance(data, dict) else data
    if isinstance(detail, dict) and "field" in detail:
        return f"{detail['field']}: {detail.get('message', '')}"
    return str(detail)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _open(url: str):
    from imsaka.hss.store import HssStore

    try:
        return await HssStore.open(url)
    except Exception as exc:
        raise CliError(
            f"--db: cannot open {url.split('@')[-1]}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None


# ----------------------------------------------------------------------------- handlers


def _add(args: argparse.Namespace) -> int:
    from imsaka.hss.store import Conflict
    from imsaka.hss.subscriber import FieldError, validate_subscriber

    ifc = None
    if args.ifc_file:
        try:
            ifc = Path(args.ifc_file).read_text()
        except OSError as exc:
            raise CliError(f"--ifc-file: {exc.strerror}") from None
    try:
        spec = validate_subscriber(
            impi=args.impi,
            impus=args.impu,
            k=args.k,
            op=args.op,
            opc=args.opc,
            amf=args.amf,
            sqn=args.sqn,
            schemes=args.scheme,
            digest_password=args.password,
            barred=args.barred,
            ifc_xml=ifc,
            visited_networks=args.visited_network,
        )
    except FieldError as exc:
        name = {
            "impus": "impu",
            "op/opc": "op/--opc",
            "ifc_xml": "ifc-file",
            "visited_networks": "visited-network",
        }.get(exc.field, exc.field)
        raise CliError(f"--{name}: {exc.reason}") from None

    async def go() -> None:
        store = await _open(_db_url(args))
        try:
            await store.add_subscriber(spec)
        except Conflict as exc:
            raise CliError(f"--{exc.field}: {str(exc).split(': ', 1)[-1]}") from None
        finally:
            await store.close()

    _run(go())
    print(
        f"added {spec.impi} with {len(spec.impus)} IMPU(s) ({spec.op_kind.upper()} given, OPc stored)"
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from imsaka.hss.csvimport import CsvError, parse_csv
    from imsaka.hss.store import Conflict

    started = time.monotonic()
    try:
        with open(args.file, newline="", encoding="utf-8") as fh:
            specs = parse_csv(fh)
    except OSError as exc:
        raise CliError(f"{args.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{args.file}: not UTF-8 text") from None
    except CsvError as exc:
        raise CliError(f"{args.file}: {exc}") from None

    async def go() -> int:
        store = await _open(_db_url(args))
        try:
            return await store.import_subscribers(specs)
        except Conflict as exc:
            raise CliError(f"{args.file}: {exc} (nothing imported)") from None
        finally:
            await store.close()

    count = _run(go())
    print(f"imported {count} subscriber(s) in {time.monotonic() - started:.1f} s")
    return 0


def _show(args: argparse.Namespace) -> int:
    from imsaka.hss.store import NotFound

    async def go():
        store = await _open(_db_url(args))
        try:
            return await store.get_subscriber(args.impi)
        except NotFound:
            raise CliError(f"impi: no subscriber {args.impi!r}") from None
        finally:
            await store.close()

    view = _run(go()).as_dict()
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(f"IMPI        {view['impi']}")
    print(
        f"credentials K, {view['op_kind'].upper()} (stored as OPc); AMF {view['amf']}; SQN {view['sqn']}"
    )
    print(f"schemes     {', '.join(view['schemes'])}")
    print(
        f"S-CSCF      {view['scscf_name'] or '-'} (Diameter {view['scscf_host'] or '-'}); pending {view['pending_scscf'] or '-'}"
    )
    for u in view["impus"]:
        flags = " barred" if u["barred"] else ""
        print(
            f"IMPU        {u['impu']}  {u['reg_state']}{flags}  (implicit set {u['implicit_set']})"
        )
    if view["visited_networks"]:
        print(f"roaming to  {', '.join(view['visited_networks'])}")
    print(f"iFC         {'provisioned' if view['ifc_xml'] else 'none'}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    api = None if args.db else _api(args)
    if api is not None:
        status, data = _call_api(*api, "DELETE", f"/api/v1/subscribers/{quote(args.impi, safe='')}")
        if status != 200:
            raise CliError(f"impi: {_detail(data)}")
        rtr = data.get("rtr", {})
        note = (
            f"; RTR to {rtr.get('to')}: {'ok' if rtr.get('ok') else rtr.get('error', rtr.get('result'))}"
            if rtr.get("sent")
            else ""
        )
        print(f"deleted {args.impi}{note}")
        return 0
    from imsaka.hss.store import NotFound

    async def go():
        store = await _open(_db_url(args))
        try:
            return await store.delete_subscriber(args.impi)
        except NotFound:
            raise CliError(f"impi: no subscriber {args.impi!r}") from None
        finally:
            await store.close()

    info = _run(go())
    warn = ""
    if info.scscf_name:
        warn = f" (it was served by {info.scscf_name}; no RTR sent: no running HSS API configured)"
    print(f"deleted {args.impi}{warn}")
    return 0


def _deregister(args: argparse.Namespace) -> int:
    """An IMPU (a sip:/tel: URI) de-registers its implicit set; an IMPI (user@realm)
    every registration of its subscription."""
    from urllib.parse import quote

    from imsaka.hss.subscriber import FieldError, validate_impi, validate_impu

    identity = args.identity.strip()
    field = "impi" if ":" not in identity else "impu"
    try:
        (validate_impi if field == "impi" else validate_impu)(identity)
    except FieldError as exc:
        raise CliError(f"{field}: {exc.reason}") from None
    api = _api(args)
    if api is None:
        raise CliError(
            "--api: de-registration needs the running HSS (give --api and --token, or [hss].api_* in -c)"
        )
    body: dict[str, str] | None = None
    if args.reason or args.server_change:
        body = {"reason_code": "SERVER_CHANGE" if args.server_change else "PERMANENT_TERMINATION"}
        if args.reason:
            body["reason"] = args.reason
    if field == "impi":
        path = f"/api/v1/subscribers/{quote(identity, safe='@')}/deregister"
    else:
        path = f"/api/v1/impus/{quote(identity, safe=':@+')}/deregister"
    status, data = _call_api(*api, "POST", path, body)
    if status != 200:
        raise CliError(f"{field}: {_detail(data)}")
    what = f"the subscription of {identity}" if field == "impi" else identity
    if data.get("sent"):
        outcome = (
            "answered 2001"
            if data.get("ok")
            else f"failed ({data.get('error') or data.get('result')})"
        )
        print(f"RTR sent to {data.get('to')}: {outcome}; {what} de-registered")
    else:
        print(f"{what}: {data.get('reason', 'nothing to do')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from imsaka.cli import main

    sys.exit(main(["hss", *sys.argv[1:]]))
