"""``imsaka demo`` (interim): the IMS AKA exchange between an HSS side and an ISIM side.

Runs in one process, no sockets: the HSS makes a vector (TS 33.102 §6.3.2), the
S-CSCF puts RAND‖AUTN in the 401 nonce (RFC 3310 §3.2), the ISIM checks AUTN and
answers RES/CK/IK (§6.3.3), the UE builds the digest response with RES as password,
the S-CSCF verifies it with XRES, and the ESP keys are expanded (TS 33.203 Annex I).
Then a resynchronisation round: the HSS's SQN is behind the ISIM's (a restored
database), the ISIM answers AUTS, a forged AUTS is refused, and the HSS recovers
SQN_MS (§6.3.5) and issues a vector the ISIM accepts.

The registration issue replaces this module with the whole-network demo over real
sockets; until then this is what ``imsaka demo`` shows.
"""

from __future__ import annotations

import argparse
import random
import secrets
from collections.abc import Callable

__all__ = ["register", "run_demo"]

IMPI = "alice@ims.mnc001.mcc001.3gppnetwork.org"
IMPU = "sip:alice@ims.mnc001.mcc001.3gppnetwork.org"
REALM = "ims.mnc001.mcc001.3gppnetwork.org"
URI = f"sip:{REALM}"
AMF = b"\x80\x00"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="show an IMS AKA exchange (HSS ↔ ISIM) with resync",
        description="IMS AKA between an in-process HSS side and ISIM side, with a resync round.",
    )
    p.add_argument(
        "--seed", type=int, help="deterministic K, OPc and RANDs (for reproducible output)"
    )
    p.add_argument(
        "--show-keys", action="store_true", help="print K, OPc, RES, CK, IK (hidden by default)"
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    return run_demo(Console(highlight=False), seed=args.seed, show_keys=args.show_keys)


def run_demo(console, *, seed: int | None = None, show_keys: bool = False) -> int:
    """Run the exchange, print it on a rich Console; 0 when every check came out right."""
    from rich.panel import Panel
    from rich.table import Table

    from imsaka.aka import digest
    from imsaka.aka.isim import AkaSuccess, AkaSyncFailure, Isim
    from imsaka.aka.keys import esp_encryption_key, esp_integrity_key
    from imsaka.aka.milenage import Milenage
    from imsaka.aka.resync import AutsMacError, recover_sqn_ms
    from imsaka.aka.sqn import HssSqn, SqnArray, split_sqn
    from imsaka.aka.vectors import generate_vector

    rng_bytes: Callable[[int], bytes] = (
        random.Random(seed).randbytes if seed is not None else secrets.token_bytes
    )

    def secret(b: bytes) -> str:
        return b.hex() if show_keys else f"<{len(b)} octets hidden>"

    def sqn_text(sqn: int) -> str:
        seq, ind = split_sqn(sqn)
        return f"{sqn:012x} (SEQ {seq}, IND {ind})"

    def step(who: str, text: str, style: str = "") -> None:
        console.print(f"[bold]{who:>8}[/bold]  {text}", style=style)

    ok = True
    k = rng_bytes(16)
    opc = rng_bytes(16)
    hss_milenage = Milenage(k, opc=opc)
    hss_sqn = HssSqn()
    isim = Isim(Milenage(k, opc=opc), SqnArray())

    table = Table(title="Subscriber (provisioned in HSS and ISIM)", show_header=False)
    for name, value in (
        ("IMPI", IMPI),
        ("IMPU", IMPU),
        ("K", secret(k)),
        ("OPc", secret(opc)),
        ("AMF", AMF.hex()),
    ):
        table.add_row(name, value)
    console.print(table)

    def challenge_round(label: str):
        """HSS vector → 401 → ISIM; returns (vector, nonce, ISIM result)."""
        console.rule(label)
        step("UE", f'REGISTER {URI}  Authorization: Digest username="{IMPI}", response=""')
        av = generate_vector(hss_milenage, hss_sqn.next(), AMF, rand_source=rng_bytes)
        step("HSS", f"MAA: vector SQN {sqn_text(av.sqn)}")
        step("HSS", f"     RAND {av.rand.hex()}  AUTN {av.autn.hex()}")
        step("HSS", f"     XRES {secret(av.xres)}  CK {secret(av.ck)}  IK {secret(av.ik)}")
        nonce = digest.make_nonce(av.rand, av.autn)
        ch = digest.Challenge(realm=REALM, nonce=nonce, qop=("auth",))
        step("S-CSCF", f"401 Unauthorized  WWW-Authenticate: {ch.to_header_value()}")
        rand, autn, _ = digest.split_nonce(nonce)
        return av, nonce, isim.authenticate(rand, autn)

    def answer(av, nonce: str, res: bytes, nc: str, auts: bytes | None = None) -> bool:
        cnonce = rng_bytes(8).hex()
        password = digest.password_for(digest.AKAV1_MD5, res=res)
        response = digest.compute_response(
            algorithm=digest.AKAV1_MD5,
            username=IMPI,
            realm=REALM,
            password=password,
            method="REGISTER",
            uri=URI,
            nonce=nonce,
            qop="auth",
            nc=nc,
            cnonce=cnonce,
        )
        extra = f', auts="{digest.encode_auts(auts)}"' if auts is not None else ""
        step(
            "UE",
            f'REGISTER  Authorization: Digest username="{IMPI}", nonce="{nonce[:16]}…", '
            f'algorithm=AKAv1-MD5, qop=auth, nc={nc}, cnonce="{cnonce}", response="{response}"{extra}',
        )
        if auts is not None:
            return True
        verified = digest.verify_response(
            response=response,
            algorithm=digest.AKAV1_MD5,
            username=IMPI,
            realm=REALM,
            password=digest.password_for(digest.AKAV1_MD5, res=av.xres),
            method="REGISTER",
            uri=URI,
            nonce=nonce,
            qop="auth",
            nc=nc,
            cnonce=cnonce,
        )
        if verified:
            step("S-CSCF", "response verified with XRES → 200 OK", "green")
        else:
            step("S-CSCF", "response does not match XRES → 403 Forbidden", "red")
        return verified

    # -- round 1: normal registration ---------------------------------------------
    av, nonce, result = challenge_round("Registration: IMS AKA (TS 33.203 §6.1)")
    if isinstance(result, AkaSuccess):
        step("ISIM", f"AUTN verified (MAC-A ok, SQN {sqn_text(result.sqn)} fresh)", "green")
        step("ISIM", f"RES {secret(result.res)}  CK {secret(result.ck)}  IK {secret(result.ik)}")
        ok &= answer(av, nonce, result.res, "00000001")
        ik_esp = esp_integrity_key("hmac-sha-1-96", result.ik)
        ck_esp = esp_encryption_key("aes-cbc", result.ck)
        step("P-CSCF", f"ESP keys: hmac-sha-1-96 {secret(ik_esp)}  aes-cbc {secret(ck_esp)}")
    else:
        step("ISIM", f"unexpected result {result!r}", "red")
        ok = False

    # -- round 2: HSS restored from an old backup: its SQN is behind the ISIM's ----
    hss_sqn.sqn_he = 0
    av, nonce, result = challenge_round("Resynchronisation (TS 33.102 §6.3.5, RFC 3310 §3.4)")
    if isinstance(result, AkaSyncFailure):
        step(
            "ISIM",
            f"MAC-A ok, SQN {sqn_text(av.sqn)} {result.verdict.value}: AUTS {result.auts.hex()}",
            "yellow",
        )
        answer(av, nonce, b"", "00000001", auts=result.auts)
        forged = bytearray(result.auts)
        forged[-1] ^= 0x01
        try:
            recover_sqn_ms(hss_milenage, av.rand, bytes(forged))
            step("HSS", "forged AUTS accepted", "red")
            ok = False
        except AutsMacError:
            step("HSS", "a forged AUTS (one bit flipped) is refused: MAC-S check failed", "green")
        sqn_ms = recover_sqn_ms(hss_milenage, av.rand, result.auts)
        hss_sqn.resync(sqn_ms)
        step("HSS", f"MAC-S verified; SQN_MS {sqn_text(sqn_ms)}; SQN_HE := {hss_sqn.sqn_he:012x}")
        av, nonce, result = challenge_round("Registration after resync")
        if isinstance(result, AkaSuccess):
            step("ISIM", f"AUTN verified (SQN {sqn_text(result.sqn)} fresh)", "green")
            ok &= answer(av, nonce, result.res, "00000001")
        else:
            step("ISIM", f"unexpected result {result!r}", "red")
            ok = False
    else:
        step("ISIM", f"expected a synchronisation failure, got {result!r}", "red")
        ok = False

    console.print(
        Panel(
            "IMS AKA completed: network and UE authenticated each other, keys agreed, resync converged."
            if ok
            else "IMS AKA demo FAILED: see the red lines above.",
            style="green" if ok else "red",
        )
    )
    return 0 if ok else 1
