"""A registration the S-CSCF accepted but whose 200 OK never reached the UE (TS 24.229
§5.1.1.2, §5.4.1.2.2; TS 34.229-1 §8.2: port-s stays the same), through the whole
core on loopback.

The UE takes the attempt for failed and registers again. Its contact is its protected
server port, so a UE that drew a new port-s for the new attempt left a second contact
at the S-CSCF beside the one it never knew was bound, and that one stayed until it
lapsed (`lifecycle_chaos`, all three restarting, seeds 8020 and 8025: the 200 lost,
then an I-CSCF restart with the HSS down answered the retransmission 480). The UE
keeps its port-s for its whole life, so the new registration replaces the binding."""

from __future__ import annotations

from tests.e2e.pcscf_gate import first_held


def _200_to_the_answer(head: bytes) -> bool:
    return head.startswith(b"SIP/2.0 200") and b"\r\nCSeq: 2 REGISTER" in head


async def test_a_registration_whose_200_the_ue_never_saw_is_replaced(home_network, subscribers):
    net = home_network
    impu = subscribers[0].impus[0]
    core = net.scscf.scscf.core
    async with first_held(net, subscribers[0], _200_to_the_answer, 20) as (ue, task, held, hand):
        data, arrival = held
        # What the UE gets instead of the 200 (as the 480 of a restarted I-CSCF came
        # in the runner): the attempt fails at the UE, the binding stands.
        hand(data.replace(b"SIP/2.0 200 OK", b"SIP/2.0 500 Lost On The Way", 1), arrival)
        first = await task
        assert not first.ok and first.status == 500, first
        contact = ue.core.contact_uri(protected=True).strip("<>")
        assert list(core.registrations[impu].contacts) == [contact]
        result = await ue.register(20)
        assert result.ok and result.protected, result
        assert list(core.registrations[impu].contacts) == [contact]
        assert (await ue.deregister(10)).ok
    assert impu not in core.registrations
