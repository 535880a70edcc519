"""Which registrations changed since a P-CSCF last wrote them to its state store.

A P-CSCF with ``[pcscf].state_store`` writes, every ``state_interval`` seconds, the
records of the registrations that changed since its last write (`imsaka.cscf.pcscf_keep`,
`imsaka.cscf.pcscf_state.record_of`). Comparing every registration's fingerprint
would cost the event loop O(registrations) per pass; instead the objects a record is
made of say when they change: `tracked` makes a subclass whose every assignment puts
the instance's IMPI in a set that the pass empties, so a pass costs O(changes).

Only assignments are seen: the fields of a registration and of a subscription are
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


def tracked(cls: type[T], changed: set[str], *, ignore: Collection[str] = ()) -> type[T]:
    """A subclass of `cls` (slotted, with an ``impi`` attribute) whose every assignment,
    but to the attributes named in `ignore`, adds the instance's ``impi`` to `changed`;
    an assignment to ``impi`` itself adds the one it had before too (a subscription
    leaving its registration changes that registration's record)."""
    store = object.__setattr__
    skip = frozenset(ignore)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if name in skip:
            store(self, name, value)
            return
        if name == "impi":
            before = getattr(self, "impi", "")
            if before:
                changed.add(before)
        store(self, name, value)
        impi = getattr(self, "impi", "")  # (not yet set early in an __init__)
        if impi:
            changed.add(impi)

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
