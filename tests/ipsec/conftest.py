"""Fixtures for the IPsec tests."""

from __future__ import annotations

import pytest

from tests.ipsec.helpers import Pair, negotiate


@pytest.fixture
def negotiated() -> Pair:
    return negotiate()
