"""Which registrations changed since a P-CSCF last wrote them to its state store.

A P-CSCF with ``[pcscf].state_store`` writes, every ``state_interval`` seconds, the
records of the registrations that changed since its last write (`imsaka.cscf.pcscf_keep`,
`imsaka.cscf.pcscf_state.record_of`). Looking at every registration would cost the
event loop O(registrations) per pass; instead the objects a record is made of say
when they change: `tracked` makes a subclass whose every assignment puts
the instance's IMPI (or, for a set held for a REGISTER's retransmissions, its key) in a
set that the pass empties, so a pass costs O(changes).

Only assignments are seen: the fields of a registration, a subscription or a hold are
replaced, never changed in place (tuples, frozen `PcscfSa`), and what the core drops
from its tables it names itself (`PcscfCore.track_changes`). Traffic over an SA set
moves its counters without any of these: the SA table lists the sets that carried a
message (`SecurityAssociationTable.track_use`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar

__all__ = ["tracked"]

T = TypeVar("T")


def tracked(
    cls: type[T], changed: set[str], *, key: str = "impi", ignore: Collection[str] = ()
) -> type[T]:
    """A subclass of `cls` (slotted, with a `key` attribute naming its record: an IMPI,
    or a held set's key) whose every assignment, but to the attributes named in
    `ignore`, adds the instance's `key` to `changed`; an assignment to `key` itself adds
    the one it had before too (a subscription leaving its registration changes that
    registration's record)."""
    store = object.__setattr__
    skip = frozenset(ignore)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if name in skip:
            store(self, name, value)
            return
        if name == key:
            before = getattr(self, key, "")
            if before:
                changed.add(before)
        store(self, name, value)
        now = getattr(self, key, "")  # (not yet set early in an __init__)
        if now:
            changed.add(now)

    return type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "__setattr__": __setattr__,
            "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}[tracked]",
            "__doc__": cls.__doc__,
        },
    )
