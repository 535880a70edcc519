"""Fixtures for the SIP tests: the seed's 13 packets as full messages."""

from __future__ import annotations

from pathlib import Path

import pytest

SEED_DIR = Path(__file__).resolve().parents[1] / "data" / "sip" / "seed"


def seed_packet(n: int) -> bytes:
    return (SEED_DIR / f"packet{n:02d}.sip").read_bytes()


SEED = {n: seed_packet(n) for n in range(1, 14)}


@pytest.fixture
def seed() -> dict[int, bytes]:
    return dict(SEED)
