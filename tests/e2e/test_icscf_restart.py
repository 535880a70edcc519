"""An I-CSCF restart while a REGISTER crosses it (RFC 3261 §16.6 step 8, §16.11,
§17.2.3; TS 24.229 §5.3.1.2), through the whole core on loopback.

The I-CSCF keeps nothing but transactions. When it dies after the S-CSCF answered a
REGISTER and before that answer reached the P-CSCF, the P-CSCF's retransmission meets
a new I-CSCF, which forwards it again. The S-CSCF must take that for the REGISTER it
has answered, not for a new one with the same Call-ID and CSeq (RFC 3261 §10.3 step
7 refuses that one: 500)."""

from __future__ import annotations

from tests.e2e.pcscf_gate import first_held


def _count(net, prefix: str, kind: str = "diameter") -> int:
    return sum(1 for r in net.trace.messages(kind) if r.summary.startswith(prefix))


async def _lose_first(net, status: bytes, cseq: bytes, subscriber, then) -> object:
    """A UE of `subscriber` registers; the first `status` answer to the REGISTER with
    CSeq `cseq` is lost on its way into the P-CSCF, and `then()` runs at that moment.
    Returns the registration's result."""

    def answer(head: bytes) -> bool:
        return head.startswith(b"SIP/2.0 " + status) and b"\r\nCSeq: " + cseq in head

    async with first_held(net, subscriber, answer, 20) as (ue, task, _lost, _):
        await then()
        result = await task
        if result.ok:
            assert (await ue.deregister(10)).ok
        return result


async def test_the_200_lost_and_the_icscf_restarted_still_registers(home_network, subscribers):
    net = home_network
    result = await _lose_first(net, b"200", b"2 REGISTER", subscribers[0], net.restart_icscf)
    assert result.ok and result.protected, result
    # the S-CSCF answered the retransmission from its transaction: one SAR for it
    assert _count(net, "SAR") == 2  # REGISTRATION, then the de-registration's
    assert net.scscf.scscf.core.counters["out_of_order"] == 0


async def test_the_401_lost_and_the_icscf_restarted_spends_no_second_vector(
    home_network, subscribers
):
    net = home_network
    result = await _lose_first(net, b"401", b"1 REGISTER", subscribers[0], net.restart_icscf)
    assert result.ok and result.protected, result
    assert net.scscf.scscf.core.counters["register"] == 3  # 401, 200, de-registration
