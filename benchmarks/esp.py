"""Benchmark: ESP protect + unprotect of a 1,000-byte SIP message (aes-cbc + hmac-sha-1-96).

Ours: `imsaka.ipsec.esp.EspOutbound.protect` then `EspInbound.unprotect` (RFC 4303:
random IV, padding and its check, sequence number, 64-packet anti-replay window,
constant-time ICV comparison) on one SA pair built once.

Baseline, same run: the same `cryptography` calls made bare per packet, the way the
library documents them: AES-128-CBC encrypt (a fresh IV from os.urandom, one
`Cipher(...).encryptor()`), HMAC-SHA1 sign (`cryptography` HMAC), HMAC-SHA1 verify,
AES-128-CBC decrypt, on a pre-padded 1,008-byte buffer; no ESP framing at all.

``ratio`` = our round trips/s ÷ baseline round trips/s (≥ 0.5 required, and ≥ 40,000
round trips/s). Bounded: `--seconds` per measurement × `--repeat` rounds × 2.

    python benchmarks/esp.py [--seconds 1.0] [--repeat 3]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import cryptography
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imsaka.ipsec.esp import EspDelivered, EspInbound, EspOutbound
from imsaka.ipsec.keys import derive_esp_keys

IK = bytes.fromhex("f769bcd751044604127672711c6d3441")
CK = bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb")


def sip_message(size: int = 1000) -> bytes:
    head = (
        b"INVITE sip:+15550002@ims.mnc001.mcc001.3gppnetwork.org SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5064;branch=z9hG4bK-bench\r\n"
        b"Call-ID: bench@imsaka\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n"
    )
    pad = b"X-Pad: " + b"x" * (size - len(head) - 11) + b"\r\n\r\n"
    msg = head + pad
    assert len(msg) == size
    return msg


def _rate(fn, seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(256):
            fn()
        calls += 256
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept")
    args = ap.parse_args(argv)

    message = sip_message()
    keys = derive_esp_keys("hmac-sha-1-96", "aes-cbc", ik=IK, ck=CK)
    out = EspOutbound(0x1234ABCD, keys)
    inb = EspInbound(0x1234ABCD, keys)

    def ours() -> None:
        result = inb.unprotect(out.protect(message, 17))
        if type(result) is not EspDelivered:
            raise SystemExit(f"esp benchmark: packet dropped ({result.reason})")

    # Bare baseline: the same primitive operations without ESP.
    aes = algorithms.AES(CK)
    ik_esp = keys.ik_esp
    padded = message + bytes(range(1, 7)) + b"\x06\x11"  # 1,008 octets, multiple of 16
    sha1 = hashes.SHA1()

    def bare() -> None:
        iv = os.urandom(16)
        enc = Cipher(aes, modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        mac = c_hmac.HMAC(ik_esp, sha1)
        mac.update(iv + ct)
        icv = mac.finalize()[:12]
        check = c_hmac.HMAC(ik_esp, sha1)
        check.update(iv + ct)
        if check.finalize()[:12] != icv:
            raise SystemExit("baseline ICV mismatch")
        dec = Cipher(aes, modes.CBC(iv)).decryptor()
        if dec.update(ct) + dec.finalize() != padded:
            raise SystemExit("baseline decrypt mismatch")

    ours()
    bare()  # warm-up and self-check
    best_ours = best_bare = 0.0
    for _ in range(max(1, args.repeat)):
        best_bare = max(best_bare, _rate(bare, args.seconds))
        best_ours = max(best_ours, _rate(ours, args.seconds))
    ratio = best_ours / best_bare
    result = {
        "benchmark": "esp_protect_unprotect_1000B_aes-cbc_hmac-sha-1-96",
        "round_trips_per_s": round(best_ours),
        "baseline": "bare cryptography AES-CBC encrypt/decrypt + HMAC-SHA1 sign/verify",
        "baseline_round_trips_per_s": round(best_bare),
        "ratio": round(ratio, 3),
        "target_round_trips_per_s": 40000,
        "target_ratio": 0.5,
        "pass": best_ours >= 40000 and ratio >= 0.5,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
