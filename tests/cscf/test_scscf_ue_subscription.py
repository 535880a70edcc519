"""The S-CSCF as notifier of a UE's reg-event subscription (TS 24.229 §5.4.2.1; RFC 6665;
RFC 3261 §12): the subscriber sits behind a P-CSCF that Record-Routes the SUBSCRIBE.

The 2xx carries the Record-Route (the UE builds its route set from it); NOTIFYs go to
the first route-set entry with Route = route set and Request-URI = the UE's Contact; an
in-dialog refresh moves the remote target and keeps the route set; a refresh of a
dialog the S-CSCF does not hold is 481; Expires: 0 ends it with a terminated NOTIFY.
"""

from __future__ import annotations

import os

from imsaka.sip import parse_message

from .conftest import IMPUS
from .test_home_network import collect_notifies, full_registration, new_ue, wait_for


def _subscribe(net, *, cseq: int, contact: str, to_tag: str = "", expires: int = 600000,
               target: str = IMPUS[0]):  # fmt: skip
    record_route = f"<sip:127.0.0.1:{net.pcscf_port};lr>"
    text = (
        f"SUBSCRIBE {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{net.pcscf_port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        "Max-Forwards: 69\r\n"
        f"Record-Route: {record_route}\r\n"
        f"From: <{IMPUS[0]}>;tag=ue1\r\n"
        f"To: <{IMPUS[0]}>{f';tag={to_tag}' if to_tag else ''}\r\n"
        f"Call-ID: ue-reg-event-1\r\nCSeq: {cseq} SUBSCRIBE\r\n"
        "Event: reg\r\n"
        f"Expires: {expires}\r\n"
        f"Contact: <{contact}>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return net.client.send_request(parse_message(text.encode()), ("127.0.0.1", net.scscf_port))


async def test_ue_subscription_through_a_record_routing_pcscf(home):
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    notifies = collect_notifies(home)
    record_route = f"<sip:127.0.0.1:{home.pcscf_port};lr>"
    r = await _subscribe(home, cseq=1, contact="sip:127.0.0.1:1357")
    assert r.status == 200 and r.to.tag
    assert r.get_all("Record-Route") == [record_route]  # RFC 3261 §12.1.1
    await wait_for(lambda: len(notifies) == 1)
    first = notifies[0]
    assert first.uri == "sip:127.0.0.1:1357" and first.get_all("Route") == [record_route]
    assert first.to.tag == "ue1" and first.from_.tag == r.to.tag
    # in-dialog refresh to the S-CSCF's Contact, with a new contact of the UE
    contact = r.contacts[0].uri
    r2 = await _subscribe(
        home, cseq=2, contact="sip:127.0.0.1:1358", to_tag=r.to.tag, target=contact
    )
    assert r2.status == 200 and r2.to.tag == r.to.tag
    await wait_for(lambda: len(notifies) == 2)
    assert notifies[1].uri == "sip:127.0.0.1:1358"  # the remote target moved
    assert notifies[1].get_all("Route") == [record_route]  # the route set did not
    assert notifies[1].cseq.seq == first.cseq.seq + 1
    assert home.scscf.census()["subscriptions"] == 1
    # a refresh of a dialog the S-CSCF does not hold
    r3 = await _subscribe(home, cseq=3, contact="sip:127.0.0.1:1358", to_tag="nope")
    assert r3.status == 481
    assert home.scscf.census()["subscriptions"] == 1
    # unsubscribe: 200, then the final NOTIFY
    r4 = await _subscribe(home, cseq=4, contact="sip:127.0.0.1:1358", to_tag=r.to.tag, expires=0)
    assert r4.status == 200
    await wait_for(lambda: len(notifies) == 3)
    assert notifies[2].get("subscription-state").startswith("terminated")
    assert home.scscf.census()["subscriptions"] == 0
