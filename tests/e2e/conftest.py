"""Fixtures for the end-to-end tests: the whole core on loopback, stopped on failure too."""

from __future__ import annotations

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
