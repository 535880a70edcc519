"""``imsaka aka``: a Milenage / AKA / HTTP Digest calculator for engineers.

    imsaka aka vector --k HEX (--op HEX | --opc HEX) --rand HEX --sqn HEX --amf HEX [--json]
    imsaka aka auts   --k HEX (--op HEX | --opc HEX) --rand HEX --sqn-ms HEX [--json]
    imsaka aka resync --k HEX (--op HEX | --opc HEX) --rand HEX --auts HEX [--json]
    imsaka aka digest --algorithm AKAv1-MD5 --username U --realm R --nonce N --uri U
                      --method REGISTER --res HEX [--ik HEX --ck HEX] [--qop auth --nc .. --cnonce ..]

Functions per TS 35.206 (Milenage), TS 33.102 §6.3 (AUTN, AUTS), RFC 3310 / RFC 4169
(digest). Output is ``name value`` lines, or one JSON object (``--json``) whose values are
lower-case hex strings. A malformed argument is one line naming it and exit code 2; a
forged AUTS is ``MAC-S check failed`` and exit code 1. Secrets are never echoed in errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from imsaka.clierror import CliError

__all__ = ["register"]

_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


def _hex_arg(name: str, value: str | None, bits: int | None) -> bytes:
    """Parse a hex argument; the error names the option, never echoes the value (it may be K)."""
    if value is None:
        raise CliError(f"{name}: required")
    text = value.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if not text or not set(text) <= _HEXDIGITS:
        raise CliError(f"{name}: not a hexadecimal string")
    if bits is not None and len(text) * 4 != bits:
        raise CliError(
            f"{name}: expected {bits} bits ({bits // 4} hex digits), got {len(text)} hex digits"
        )
    if len(text) % 2:
        raise CliError(f"{name}: odd number of hex digits")
    return bytes.fromhex(text)


def _milenage(args: argparse.Namespace):
    from imsaka.aka.milenage import Milenage

    k = _hex_arg("--k", args.k, 128)
    if args.op is not None:
        return Milenage(k, op=_hex_arg("--op", args.op, 128))
    return Milenage(k, opc=_hex_arg("--opc", args.opc, 128))


def _emit(args: argparse.Namespace, fields: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(fields, indent=2))
        return
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {value}")


def _rand_arg(args: argparse.Namespace) -> bytes:
    if args.rand is None:
        import secrets

        return secrets.token_bytes(16)
    return _hex_arg("--rand", args.rand, 128)


# -- handlers -----------------------------------------------------------------------


def _cmd_vector(args: argparse.Namespace) -> int:
    m = _milenage(args)
    rand = _rand_arg(args)
    sqn = _hex_arg("--sqn", args.sqn, 48)
    amf = _hex_arg("--amf", args.amf, 16)
    out = m.compute_all(rand, sqn, amf)
    concealed = bytes(a ^ b for a, b in zip(sqn, out["ak"], strict=True))
    autn = concealed + amf + out["mac_a"]
    _emit(
        args,
        {
            "rand": rand.hex(),
            "opc": m.opc.hex(),
            "mac_a": out["mac_a"].hex(),
            "mac_s": out["mac_s"].hex(),
            "xres": out["res"].hex(),
            "res": out["res"].hex(),
            "ck": out["ck"].hex(),
            "ik": out["ik"].hex(),
            "ak": out["ak"].hex(),
            "ak_star": out["ak_star"].hex(),
            "autn": autn.hex(),
        },
    )
    return 0


def _cmd_auts(args: argparse.Namespace) -> int:
    from imsaka.aka.resync import build_auts

    m = _milenage(args)
    rand = _hex_arg("--rand", args.rand, 128)
    sqn_ms = int.from_bytes(_hex_arg("--sqn-ms", args.sqn_ms, 48), "big")
    _emit(args, {"auts": build_auts(m, rand, sqn_ms).hex()})
    return 0


def _cmd_resync(args: argparse.Namespace) -> int:
    from imsaka.aka.resync import AutsMacError, recover_sqn_ms

    m = _milenage(args)
    rand = _hex_arg("--rand", args.rand, 128)
    auts = _hex_arg("--auts", args.auts, 112)
    try:
        sqn_ms = recover_sqn_ms(m, rand, auts)
    except AutsMacError:
        print("imsaka: error: MAC-S check failed", file=sys.stderr)
        return 1
    _emit(args, {"sqn_ms": sqn_ms.to_bytes(6, "big").hex()})
    return 0


def _cmd_digest(args: argparse.Namespace) -> int:
    from imsaka.aka import digest

    try:
        algorithm = digest.canonical_algorithm(args.algorithm)
    except digest.DigestError:
        raise CliError(f"--algorithm: expected one of {', '.join(digest.ALGORITHMS)}") from None
    if algorithm == digest.MD5:
        if args.password is None:
            raise CliError("--password: required for MD5")
        password = digest.password_for(algorithm, password=args.password)
    else:
        res = _hex_arg("--res", args.res, None) if args.res != "" else b""
        if len(res) > 16 or 0 < len(res) < 4:
            raise CliError(f"--res: expected 32..128 bits, got {len(res) * 8}")
        ik = ck = None
        if algorithm == digest.AKAV2_MD5:
            ik = _hex_arg("--ik", args.ik, 128)
            ck = _hex_arg("--ck", args.ck, 128)
        password = digest.password_for(algorithm, res=res, ik=ik, ck=ck)
    if args.qop is not None:
        if args.nc is None:
            raise CliError("--nc: required with --qop")
        if args.cnonce is None:
            raise CliError("--cnonce: required with --qop")
        if len(args.nc) != 8 or not set(args.nc) <= _HEXDIGITS:
            raise CliError("--nc: expected 8 hex digits")
    body = _hex_arg("--body", args.body, None) if args.body else b""
    response = digest.compute_response(
        algorithm=algorithm,
        username=args.username,
        realm=args.realm,
        password=password,
        method=args.method,
        uri=args.uri,
        nonce=args.nonce,
        qop=args.qop,
        nc=args.nc,
        cnonce=args.cnonce,
        body=body,
    )
    _emit(args, {"response": response})
    return 0


# -- registration --------------------------------------------------------------------


def _add_subscriber_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", required=True, metavar="HEX", help="subscriber key K (128 bits)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--op", metavar="HEX", help="operator variant OP (128 bits); OPc is derived")
    group.add_argument("--opc", metavar="HEX", help="per-subscriber OPc (128 bits)")


def register(subparsers: argparse._SubParsersAction) -> None:
    aka = subparsers.add_parser(
        "aka",
        help="Milenage / AKA / digest calculator",
        description="Milenage (TS 35.206), AUTN/AUTS (TS 33.102) and HTTP Digest AKA (RFC 3310/4169).",
    )
    sub = aka.add_subparsers(dest="aka_command", metavar="ACTION", required=True)

    p = sub.add_parser("vector", help="f1..f5*, AUTN for K, OP/OPc, RAND, SQN, AMF")
    _add_subscriber_args(p)
    p.add_argument("--rand", metavar="HEX", help="RAND (128 bits); random when omitted")
    p.add_argument("--sqn", required=True, metavar="HEX", help="SQN (48 bits)")
    p.add_argument("--amf", required=True, metavar="HEX", help="AMF (16 bits), e.g. 8000")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_vector)

    p = sub.add_parser("auts", help="AUTS the ISIM sends for SQN_MS (resync)")
    _add_subscriber_args(p)
    p.add_argument("--rand", required=True, metavar="HEX", help="RAND of the challenge (128 bits)")
    p.add_argument("--sqn-ms", required=True, metavar="HEX", help="SQN_MS (48 bits)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_auts)

    p = sub.add_parser("resync", help="recover SQN_MS from RAND and AUTS, checking MAC-S")
    _add_subscriber_args(p)
    p.add_argument("--rand", required=True, metavar="HEX", help="RAND of the challenge (128 bits)")
    p.add_argument("--auts", required=True, metavar="HEX", help="AUTS (112 bits)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_resync)

    p = sub.add_parser("digest", help="HTTP Digest response (AKAv1-MD5, AKAv2-MD5, MD5)")
    p.add_argument("--algorithm", default="AKAv1-MD5", help="AKAv1-MD5 (default), AKAv2-MD5, MD5")
    p.add_argument("--username", required=True, help="username (the IMPI)")
    p.add_argument("--realm", required=True)
    p.add_argument("--nonce", required=True, help="nonce as in the challenge (base64)")
    p.add_argument("--uri", required=True, help="digest-uri, e.g. sip:ims.example.org")
    p.add_argument("--method", default="REGISTER")
    p.add_argument("--res", metavar="HEX", help="RES (32..128 bits); '' for the resync password")
    p.add_argument("--ik", metavar="HEX", help="IK (128 bits), AKAv2-MD5")
    p.add_argument("--ck", metavar="HEX", help="CK (128 bits), AKAv2-MD5")
    p.add_argument("--password", help="password, MD5 only")
    p.add_argument("--qop", choices=("auth", "auth-int"))
    p.add_argument("--nc", help="nonce count, 8 hex digits")
    p.add_argument("--cnonce")
    p.add_argument("--body", metavar="HEX", help="message body for qop auth-int")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_digest)
