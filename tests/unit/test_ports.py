"""imsaka.ports: configuration ports that a bind to port 0 can never take."""

import socket

import pytest

from imsaka import ports


def test_ports_lie_below_the_ephemeral_range_and_bind_for_udp_and_tcp():
    low = min(ports._HIGHEST, ports._ephemeral_low())
    seen = set()
    for _ in range(50):
        p = ports.free_port("127.0.0.1", tcp=True)
        assert ports._LOWEST <= p < low
        seen.add(p)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", p))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", p))
    assert len(seen) == 50  # never the same port twice in one run


def test_a_port_in_use_is_not_handed_out(monkeypatch):
    taken = ports.free_port("127.0.0.1")
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", taken))
    try:
        forced = iter([taken] * 5 + [taken + 1 if taken + 1 < ports._HIGHEST else taken - 1])
        monkeypatch.setattr(ports, "_recent_set", set())
        monkeypatch.setattr(ports._rng, "randrange", lambda a, b: next(forced))
        assert ports.free_port("127.0.0.1") != taken
    finally:
        held.close()


def test_a_low_ephemeral_range_falls_back_to_the_kernels_choice(monkeypatch, tmp_path):
    f = tmp_path / "range"
    f.write_text("9000\t60999\n")
    monkeypatch.setattr(ports, "_RANGE_FILE", f)
    p = ports.free_port("127.0.0.1")
    assert p >= 9000


@pytest.mark.parametrize("host", ["::1"])
def test_ipv6_loopback(host):
    p = ports.free_port(host)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
        u.bind((host, p))


def test_a_run_of_ports_is_remembered_whole(monkeypatch):
    """The ports of a run next to the one `free_port` drew are handed out to no one else:
    a second run whose first port would be the first run's second gets another. Before
    2026-11-29 (eleventh session) the IPsec test helper's runs remembered their first
    port only, and a UE's port-s could be the P-CSCF's port-c in the same test (both
    SO_REUSEADDR: a datagram may reach the wrong socket; the likeliest cause of a CI
    run's 2 s timeout in tests/ipsec/test_backend.py's tshark test)."""
    first = ports.free_port_run(2, "127.0.0.1")
    assert first[1] == first[0] + 1
    real = ports._rng.randrange
    forced = iter([first[1]] * 3)  # then the real draws
    with monkeypatch.context() as m:
        m.setattr(ports._rng, "randrange", lambda a, b: next(forced, None) or real(a, b))
        second = ports.free_port_run(2, "127.0.0.1")
    assert next(forced, None) is None  # first[1] was offered, and passed over
    assert not set(second) & set(first)
    spaced = ports.free_port_run(3, "127.0.0.1", step=2)
    assert spaced[2] - spaced[0] == 4 and not set(spaced) & set(first + second)
