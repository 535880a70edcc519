"""Benchmark: authentication vector generation vs the raw AES-128 it needs.

One vector (TS 33.102 §6.3.2, Milenage TS 35.206) needs five AES-128 block
encryptions under K: TEMP, OUT1 (MAC-A), OUT2 (RES, AK), OUT3 (CK), OUT4 (IK).
The baseline is exactly those five single-block encryptions through the same
`cryptography` encryptor, measured in the same run; ``ratio`` is our time per vector
over the baseline's time per vector (target ≤ 3). Our number includes drawing RAND
from `secrets`, building AUTN and the frozen `AuthVector`.

Also reported: the batch path (`generate_vectors`, one MAR asking for n vectors) and
the pure cipher cost with all blocks in one call (a floor no Python code reaches).

    python benchmarks/aka_vectors.py [--seconds 1.0] [--repeat 3] [--batch 32]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imsaka.aka.milenage import Milenage
from imsaka.aka.sqn import HssSqn
from imsaka.aka.vectors import generate_vector, generate_vectors

K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
AMF = b"\x80\x00"
BLOCKS_PER_VECTOR = 5


def _rate(fn, units_per_call: int, seconds: float) -> float:
    """Units per second of fn over one slice of about ``seconds``."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(32):
            fn()
        calls += 32
        now = time.perf_counter()
        if now >= deadline:
            return calls * units_per_call / (now - start)


def best_rates(kinds: dict, seconds: float, repeat: int, slice_s: float = 0.05) -> dict:
    """Best slice rate per kind, the kinds interleaved slice by slice.

    The build machine is shared: other processes come in bursts. Short interleaved
    slices give every kind the same chances, and the best slice of each is the one
    least disturbed, so the ratio of bests holds even when the load moves.
    """
    best = dict.fromkeys(kinds, 0.0)
    rounds = max(1, round(seconds * repeat / slice_s))
    for _ in range(rounds):
        for name, (fn, units) in kinds.items():
            best[name] = max(best[name], _rate(fn, units, slice_s))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per kind and round")
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds (time per kind = seconds × repeat)"
    )
    ap.add_argument("--batch", type=int, default=32, help="vectors per generate_vectors call")
    args = ap.parse_args(argv)

    m = Milenage(K, opc=OPC)
    hss = HssSqn()
    batch = args.batch

    def one_vector() -> None:
        generate_vector(m, hss.next(), AMF)

    def batch_vectors() -> None:
        generate_vectors(m, hss.take(batch), AMF)

    # Baseline: the five single-block AES-128 encryptions per vector, same library.
    enc = Cipher(algorithms.AES(K), modes.ECB()).encryptor().update
    block = os.urandom(16)

    def five_blocks() -> None:
        enc(block)
        enc(block)
        enc(block)
        enc(block)
        enc(block)

    bulk_in = os.urandom(16 * BLOCKS_PER_VECTOR * 1024)

    def bulk_blocks() -> None:
        enc(bulk_in)

    best = best_rates(
        {
            "single": (one_vector, 1),
            "aes_blocks": (five_blocks, 1),
            "batch": (batch_vectors, batch),
            "aes_bulk": (bulk_blocks, 1024),
        },
        args.seconds,
        args.repeat,
    )

    # sanity: the vectors we timed are the real thing
    check = generate_vector(m, 0x21, AMF, rand=bytes(16))
    assert check.autn == m.vector(bytes(16), 0x21, AMF)[0]

    result = {
        "benchmark": "aka_vectors",
        "unit": "vectors/s (one core)",
        "ours_vectors_per_s": round(best["single"]),
        "baseline_aes_5_blocks_per_s": round(best["aes_blocks"]),
        "ratio": round(best["aes_blocks"] / best["single"], 2),
        "target": {"min_vectors_per_s": 50000, "max_ratio": 3.0},
        "ok": best["single"] >= 50000 and best["aes_blocks"] / best["single"] <= 3.0,
        "batch": {
            "size": batch,
            "ours_vectors_per_s": round(best["batch"]),
            "ratio": round(best["aes_blocks"] / best["batch"], 2),
        },
        "aes_bulk_floor": {
            "vectors_per_s": round(best["aes_bulk"]),
            "note": "5 blocks per vector in one cipher call: no per-call Python cost",
            "ratio": round(best["aes_bulk"] / best["single"], 2),
        },
        "notes": "ratio = time per vector / time of 5 single-block AES-128 encryptions "
        "(same cryptography encryptor, same run); ours includes RAND from secrets, "
        "SQN advance, AUTN and the AuthVector object",
        "python": platform.python_version(),
        "method": "best of interleaved 50 ms slices",
        "seconds_per_kind": args.seconds * args.repeat,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
