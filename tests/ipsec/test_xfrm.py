"""Kernel backend: the XFRM requests it builds, and its one-line failure on this kernel."""

from __future__ import annotations

import asyncio
import re

import pytest

from imsaka.ipsec import XfrmUnavailable, create_backend
from imsaka.ipsec.xfrm import (
    XfrmBackend,
    policy_add_lines,
    probe_xfrm,
    redact,
    sa_set_add_lines,
    sa_set_delete_lines,
    state_add_line,
)
from tests.ipsec.helpers import CK, IK, negotiate


def test_state_line_for_sha1_aes_cbc(negotiated):
    sa = negotiated.pcscf_set.client_sa()
    line = state_add_line(sa)
    assert line == (
        f"xfrm state add src 127.0.0.1 dst 127.0.0.1 proto esp spi 0x{sa.spi:08x}"
        f" reqid {sa.spi} mode transport replay-window 64"
        f" auth-trunc hmac(sha1) 0x{IK.hex()}00000000 96 enc cbc(aes) 0x{CK.hex()}"
    )


@pytest.mark.parametrize(
    "alg,ealg,expect",
    [
        ("hmac-md5-96", "des-ede3-cbc", rf"auth-trunc hmac\(md5\) 0x{IK.hex()} 96 enc cbc\(des3_ede\) 0x{CK.hex()}{CK.hex()[:16]}$"),
        ("hmac-sha-1-96", "null", r'auth-trunc hmac\(sha1\) 0x[0-9a-f]{40} 96 enc ecb\(cipher_null\) ""$'),
        ("null", "aes-gcm", rf"aead rfc4106\(gcm\(aes\)\) 0x{CK.hex()}[0-9a-f]{{8}} 128$"),
        ("aes-gmac", "null", rf"aead rfc4543\(gcm\(aes\)\) 0x{IK.hex()}[0-9a-f]{{8}} 128$"),
    ],
)  # fmt: skip
def test_state_lines_per_transform(alg, ealg, expect):
    n = negotiate(alg, ealg)
    for sa in n.ue_set.all_sas:
        assert re.search(expect, state_add_line(sa)), state_add_line(sa)


def test_policies_cover_udp_and_tcp_in_both_directions(negotiated):
    s = negotiated.pcscf_set
    lines = sa_set_add_lines(s)
    assert sum(line.startswith("xfrm state add") for line in lines) == 4
    policies = [line for line in lines if line.startswith("xfrm policy add")]
    assert len(policies) == 8
    for sa in s.all_sas:
        mine = policy_add_lines(sa)
        assert {re.search(r"proto (udp|tcp) ", p).group(1) for p in mine} == {"udp", "tcp"}
        for p in mine:
            assert f"sport {sa.src[1]} dport {sa.dst[1]}" in p
            assert f"dir {'in' if sa.inbound else 'out'}" in p
            assert f"tmpl src {sa.src[0]} dst {sa.dst[0]} proto esp spi 0x{sa.spi:08x}" in p
            assert "src 127.0.0.1/32 dst 127.0.0.1/32" in p and "mode transport" in p
    deletes = sa_set_delete_lines(s)
    assert len(deletes) == 12 and deletes[-1].startswith("xfrm state delete")


def test_ipv6_selectors():
    n = negotiate(ue_ip="::1", pcscf_ip="::1")
    line = policy_add_lines(n.pcscf_set.client_sa())[0]
    assert "src ::1/128 dst ::1/128" in line


def test_redact_hides_keys(negotiated):
    line = state_add_line(negotiated.ue_set.client_sa())
    assert IK.hex() in line
    assert IK.hex() not in redact(line) and CK.hex() not in redact(line)


def test_probe_on_this_kernel_fails_with_one_clear_line():
    # This machine's kernel has XFRM netlink but no ESP type ("Requested type not found").
    try:
        probe_xfrm()
    except XfrmUnavailable as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.startswith("xfrm:")
        assert "userspace" in msg
    else:  # pragma: no cover - a kernel with esp4 and CAP_NET_ADMIN: the probe cleaned up
        import subprocess

        out = subprocess.run(["ip", "xfrm", "state"], capture_output=True, text=True).stdout
        assert "0xfff0" not in out


async def test_backend_start_fails_cleanly_and_installs_through_the_runner():
    loop = asyncio.get_running_loop()
    n = negotiate(now=loop.time())
    backend = create_backend("xfrm", n.pcscf)
    with pytest.raises(XfrmUnavailable):
        await backend.start()
    await backend.close()

    batches: list[list[str]] = []
    fake = XfrmBackend(n.pcscf, runner=lambda lines: batches.append(list(lines)), probe=True)
    await fake.start()
    try:
        assert batches[0][0].startswith("xfrm state add src 127.0.0.1 dst 127.0.0.1")  # probe
        assert batches[1][0].startswith("xfrm state delete")
        assert batches[2] == sa_set_add_lines(n.pcscf_set)
        assert fake.bound_ports() == [
            n.pcscf_set.pcscf_ports.port_c,
            n.pcscf_set.pcscf_ports.port_s,
        ]
        # Clear SIP on the protected ports is matched to its SA by peer and port.
        n.ue.handle_timer(loop.time())
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", n.ue_set.ue_ports.port_c))
            s.sendto(
                b"REGISTER sip:x SIP/2.0\r\n\r\n", ("127.0.0.1", n.pcscf_set.pcscf_ports.port_s)
            )
            msg = await asyncio.wait_for(fake.receive(), 2)
        assert msg.sa.spi == n.pcscf_set.pcscf_spis[1]
        n.pcscf.remove_contact("ue1", now=loop.time())
        fake.sync()
        assert batches[-1] == sa_set_delete_lines(n.pcscf_set)
    finally:
        await fake.close()
