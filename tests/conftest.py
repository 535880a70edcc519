"""Fixtures shared by every test folder."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from imsaka import ports

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = Path(__file__).resolve().parent / "data"


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A loopback port free now for `kind`, outside the kernel's ephemeral range."""
    return ports.free_port(host, udp=kind == socket.SOCK_DGRAM, tcp=kind == socket.SOCK_STREAM)


@pytest.fixture
def milenage_sets() -> list[dict]:
    """The 3GPP TS 35.208 Milenage test sets from shared/vectors."""
    path = SHARED / "vectors" / "milenage-ts35208.json"
    if not path.exists():  # CI lays shared/ beside the clone; a copy ships in tests/data
        path = DATA / "milenage-ts35208.json"
    return json.loads(path.read_text())["sets"]
