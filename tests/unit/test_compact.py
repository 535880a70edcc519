"""imsaka.sip.compact.SharedTuples: one tuple per distinct route set, bounded."""

from imsaka.sip.compact import PACK_GROUP, SharedTuples, WirePacker


def test_equal_route_sets_share_one_tuple_of_interned_strings():
    table = SharedTuples()
    a = table.share(["<sip:" + "pcscf.visited1.net;lr>"])
    b = table.share(("<sip:pcscf.visited1.net" + ";lr>",))
    assert a == b == ("<sip:pcscf.visited1.net;lr>",)
    assert a is b
    assert a[0] is b[0]


def test_the_table_is_bounded_and_old_tuples_stay_valid():
    table = SharedTuples(limit=4)
    first = table.share(["r0"])
    for n in range(1, 10):
        table.share([f"r{n}"])
    assert len(table._known) <= 4
    assert first == ("r0",)
    assert table.share(["r0"]) == first


def test_a_group_that_straddles_the_end_of_learning_packs():
    """The dictionary freezes after `LEARN_FROM` messages; a group whose items cross
    that point (single `pack` calls before it left the count off the group size) packs
    and unpacks, where learning went on into the frozen state and failed."""
    w = WirePacker()
    msgs = [
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{i}\r\nCSeq: {i} REGISTER\r\n"
        "Content-Length: 0\r\n\r\n".encode()
        for i in range(WirePacker.LEARN_FROM + PACK_GROUP)
    ]
    w.pack(msgs[0])  # one alone: the groups no longer end where learning does
    packed = []
    for at in range(1, len(msgs) - PACK_GROUP + 1, PACK_GROUP):
        packed += w.pack_group(msgs[at : at + PACK_GROUP])
    assert [w.unpack(p) for p in packed] == msgs[1 : 1 + len(packed)]
