"""imsaka.sip.compact.SharedTuples: one tuple per distinct route set, bounded."""

from imsaka.sip.compact import SharedTuples


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
