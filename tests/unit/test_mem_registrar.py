"""The S-CSCF's registration record keeps its User-Data compressed and shares the
Path tuple of a P-CSCF between its UEs; reads, stores and JSON see the same text."""

from __future__ import annotations

import asyncio

from imsaka.cscf.registrar import ContactBinding, MemoryBindingStore, Registration
from imsaka.sip.compact import PackedWire


def xml(n: int) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><IMSSubscription>'
        f"<PrivateID>user{n}_private@home1.net</PrivateID><ServiceProfile><PublicIdentity>"
        f"<BarringIndication>0</BarringIndication><Identity>sip:user{n}_public1@home1.net"
        "</Identity></PublicIdentity></ServiceProfile></IMSSubscription>"
    )


def record(n: int) -> Registration:
    impu = f"sip:user{n}_public1@home1.net"
    binding = ContactBinding(f"sip:10.0.0.{n}:5060", 1000.0, "", ("<sip:term@p;lr>",), "c", 1)
    return Registration(
        impu, f"user{n}_private@home1.net", {binding.uri: binding}, (impu,), xml(n), 5.0
    )


def test_user_data_is_kept_packed_and_read_as_text():
    regs = [record(n) for n in range(20)]
    for n, reg in enumerate(regs):
        assert reg.user_data == xml(n)
        assert type(reg._user_data) is PackedWire and len(reg._user_data) < len(xml(n)) // 2
    back = Registration.from_json(regs[3].to_json())
    assert back == regs[3] and back.user_data == xml(3)
    regs[4].user_data = xml(99)
    assert regs[4].user_data == xml(99) and regs[4] != record(4)
    empty = Registration("sip:a@b", "a@b")
    assert empty.user_data == "" and not empty._user_data


def test_memory_store_hands_the_packed_form_on_unchanged():
    store = MemoryBindingStore()
    reg = record(7)
    asyncio.run(store.put(reg))
    got = asyncio.run(store.get(reg.impu))
    assert got == reg and got.user_data == xml(7)
    assert got._user_data is reg._user_data  # shared, not packed again


def test_contact_map_behaves_as_a_dict_through_one_and_more_contacts():
    from imsaka.cscf.registrar import ContactMap

    def b(uri: str) -> ContactBinding:
        return ContactBinding(uri, 1.0)

    m, d = ContactMap(), {}
    steps = [("set", "a"), ("set", "a"), ("set", "b"), ("set", "c"), ("del", "b"), ("del", "a")]
    steps += [("del", "c"), ("set", "d"), ("del", "d")]
    for op, uri in steps:
        if op == "set":
            m[uri] = d[uri] = b(uri)
        else:
            del m[uri]
            del d[uri]
        assert dict(m.items()) == d and m == d and len(m) == len(d) and list(m) == list(d)
        assert [x.uri for x in m.values()] == [x.uri for x in d.values()]
        assert ("a" in m) == ("a" in d) and m.get("a") is d.get("a")
    import pytest

    with pytest.raises(KeyError):
        del m["zz"]
    with pytest.raises(KeyError):
        m["zz"]
    # a record's contacts are a ContactMap whatever it was given
    reg = record(1)
    assert type(reg.contacts) is ContactMap and list(reg.contacts) == ["sip:10.0.0.1:5060"]
    assert Registration.from_json(reg.to_json()) == reg


def test_memory_store_shares_immutable_bindings_and_keeps_its_snapshot():
    import dataclasses

    import pytest

    store = MemoryBindingStore()
    reg = record(2)
    asyncio.run(store.put(reg))
    (binding,) = reg.contacts.values()
    with pytest.raises(dataclasses.FrozenInstanceError):
        binding.expires_at = 0.0  # type: ignore[misc]
    del reg.contacts[binding.uri]  # the caller's record changes, the stored one does not
    got = asyncio.run(store.get(reg.impu))
    assert list(got.contacts.values()) == [binding] and got.contacts[binding.uri] is binding
    assert asyncio.run(store.claim_lapsed(reg.impu, 999.0)) == "live"
    assert asyncio.run(store.claim_lapsed(reg.impu, 1000.0)) == "removed"
