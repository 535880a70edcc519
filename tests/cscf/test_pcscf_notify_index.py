"""P-CSCF core (sans-I/O): a terminated reg-event NOTIFY (RFC 3680; TS 24.229 §5.2.3)
costs O(its UE's contexts), not O(all forwarded requests): the open REGISTERs it waits
for and the requests taken to the UE that `_end_to_ue` answers are read from a per-IMPI
index of the open contexts (`_open_by_impi`), which empties with the table."""

from __future__ import annotations

from collections import OrderedDict

from imsaka.cscf.pcscf import Arrival, Forward, ReleaseSecurityAssociations, Reply
from imsaka.sip import make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import (
    ICSCF,
    SCSCF,
    UE_C,
    _own_terminated_notify,
    de_register_ok,
    de_register_text,
    registered,
    scscf_notify,
    subscribe_through,
)
from tests.e2e.test_pcscf_core import PACKET1

OTHERS = 2000


class _CountingTable(OrderedDict):
    """`pending`, counting the entries any walk over it yields."""

    walked = 0

    def _count(self, it):
        for x in it:
            _CountingTable.walked += 1
            yield x

    def __iter__(self):
        return self._count(super().__iter__())

    def items(self):
        return self._count(super().items())

    def values(self):
        return self._count(super().values())


def _with_others(p, at: float = 4.5) -> None:
    """Other UEs' initial REGISTERs in flight: `OTHERS` contexts in `pending`."""
    p.max_in_flight = 0
    p.max_queue_delay = 0
    for j in range(OTHERS):
        text = PACKET1.replace("user1_private", f"other{j}_private").replace(
            "z9hG4bKnashds7", f"z9hG4bKother{j}"
        )
        (fwd,) = p.receive_request(parse_message(text.encode()), Arrival(("127.0.0.2", 9000)), at)
        assert isinstance(fwd, Forward)
    p.pending = _CountingTable(p.pending)


def _walked(call):
    _CountingTable.walked = 0
    out = call()
    return out, _CountingTable.walked


def test_a_terminated_notify_does_not_walk_the_table():
    p, _, acts = registered()
    _with_others(p)
    notify = _own_terminated_notify(p, acts)
    out, walked = _walked(lambda: p.receive_request(notify, Arrival(SCSCF), 5.0))
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0 and len(p.pending) > OTHERS
    assert walked <= 2, walked  # (it was every context: > OTHERS)


def test_with_a_register_open_and_a_request_to_the_ue_open_nor_does_its_answer():
    p, inst, acts = registered()
    subscribe_through(p, inst)
    _with_others(p, 4.1)  # older than the UE's contexts: a walk meets them first
    text = de_register_text(p).replace("z9hG4bKdereg", "z9hG4bKrereg")
    text = text.replace(";expires=0", ";expires=600000")
    (fwd,) = p.receive_request(parse_message(text.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 4.2)
    (to_ue,) = p.receive_request(scscf_notify(branch="z9hG4bKnotify9", cseq=5), Arrival(SCSCF), 4.3)
    assert isinstance(to_ue, Reply) and p.pending_to_ue() == 1
    out, walked = _walked(
        lambda: p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 5.0)
    )
    assert [type(a) for a in out] == [Reply] and walked <= 2, walked
    # the re-REGISTER's 200: the set is held, and with it the request taken to the UE
    # stays open (its answer can still come back over the held set)
    ok = make_response(
        parse_message(fwd.message.to_bytes()),
        200,
        to_tag="5ef4",
        headers=[("Contact", "<sip:127.0.0.1:1357>;expires=600000")],
    )
    out, walked = _walked(lambda: p.receive_response(parse_message(ok.to_bytes()), ICSCF, 5.1))
    assert not [a for a in out if isinstance(a, Forward)]
    assert p.pending_to_ue() == 1 and walked <= 2, walked


def test_the_index_empties_with_the_table():
    p, inst, _ = registered()
    subscribe_through(p, inst)
    (to_ue,) = p.receive_request(scscf_notify(branch="z9hG4bKn1", cseq=3), Arrival(SCSCF), 4.2)
    fwd = p.receive_request(
        parse_message(de_register_text(p).encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 4.3
    )[0]
    assert set(p._open_by_impi) == {"user1_private@home1.net"}
    assert len(p._open_by_impi["user1_private@home1.net"]) == 2
    p.receive_response(de_register_ok(fwd), ICSCF, 4.4)
    # the 200 answered one; the NOTIFY to the UE waits for the UE's answer, over the
    # set held for the de-REGISTER's retransmissions
    assert len(p._open_by_impi["user1_private@home1.net"]) == 1
    answer = make_response(parse_message(to_ue.message.to_bytes()), 200)
    p.receive_response(parse_message(answer.to_bytes()), UE_C, 4.5, spi=inst.sa.spi_pc)
    assert p._open_by_impi == {}
    # a context never answered leaves the index at its Timer F
    p2, _, _ = registered()
    p2.receive_request(scscf_notify(branch="z9hG4bKn2", cseq=3), Arrival(SCSCF), 4.2)
    assert p2._open_by_impi
    p2.handle_timer(100.0)
    assert p2._open_by_impi == {} and not p2.pending
