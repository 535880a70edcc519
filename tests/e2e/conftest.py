"""Fixtures for the end-to-end tests: the whole core on loopback, stopped on failure too."""

from __future__ import annotations

import os

import pytest

from imsaka.network import Network, NetworkOptions, make_subscribers


@pytest.fixture
def subscribers():
    return make_subscribers(3, seed=2026)


@pytest.fixture
async def home_network(subscribers):
    net = Network(subscribers, NetworkOptions(visited=False))
    await net.start()
    try:
        yield net
    finally:
        await net.stop()


@pytest.fixture
async def visited_network(subscribers):
    net = Network(subscribers, NetworkOptions(visited=True))
    await net.start()
    try:
        yield net
    finally:
        await net.stop()


@pytest.fixture
def redis_url() -> str:
    """Redis for the binding-store tests (TS 24.229 registrar state across restarts)."""
    return os.environ.get("IMSAKA_TEST_REDIS", "redis://127.0.0.1:6379/15")
