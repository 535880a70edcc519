"""Bulk subscriber import from CSV (one transaction: every row or none).

Header row naming the columns ``impi,impu,k,op,opc,amf`` and optionally ``sqn``
(any order; extra optional columns ``schemes``, ``password``). One of op/opc may be
empty per row; several IMPUs in one cell are separated by ``|``. A bad row is
reported by its line number (the header is line 1) and nothing is written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from imsaka.hss.subscriber import FieldError, SubscriberSpec, validate_subscriber

__all__ = ["REQUIRED_COLUMNS", "CsvError", "parse_csv"]

REQUIRED_COLUMNS = ("impi", "impu", "k", "op", "opc", "amf")
OPTIONAL_COLUMNS = ("sqn", "schemes", "password")


class CsvError(ValueError):
    """A bad CSV file: ``line`` (1-based, header = 1) and ``field`` say where."""

    def __init__(self, line: int, field_name: str, reason: str) -> None:
        super().__init__(f"line {line}: {field_name}: {reason}")
        self.line = line
        self.field = field_name
        self.reason = reason


def parse_csv(lines: Iterable[str] | str) -> list[SubscriberSpec]:
    """Validate every row; raise `CsvError` at the first bad one."""
    if isinstance(lines, str):
        lines = io.StringIO(lines)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError(1, "header", "empty file") from None
    except csv.Error as exc:
        raise CsvError(1, "header", f"unreadable CSV ({exc})") from None
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    for col in REQUIRED_COLUMNS:
        if col not in names:
            raise CsvError(
                1, col, "column missing from the header (need impi,impu,k,op,opc,amf[,sqn])"
            )
    for col in names:
        if col not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raise CsvError(1, col or "header", "unknown column")
    if len(set(names)) != len(names):
        raise CsvError(1, "header", "a column is named twice")
    idx = {n: i for i, n in enumerate(names)}
    width = len(names)
    specs: list[SubscriberSpec] = []
    seen_impi: dict[str, int] = {}
    seen_impu: dict[str, int] = {}
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise CsvError(line, "row", f"{len(row)} cells, the header has {width}")
            get = row.__getitem__
            try:
                spec = validate_subscriber(
                    impi=get(idx["impi"]),
                    impus=[u for u in get(idx["impu"]).split("|") if u.strip()] or "",
                    k=get(idx["k"]),
                    op=get(idx["op"]),
                    opc=get(idx["opc"]),
                    amf=get(idx["amf"]),
                    sqn=get(idx["sqn"]) if "sqn" in idx else None,
                    schemes=get(idx["schemes"]) or None if "schemes" in idx else None,
                    digest_password=get(idx["password"]) if "password" in idx else None,
                )
            except FieldError as exc:
                raise CsvError(line, exc.field, exc.reason) from None
            if spec.impi in seen_impi:
                raise CsvError(
                    line, "impi", f"{spec.impi!r} already on line {seen_impi[spec.impi]}"
                )
            seen_impi[spec.impi] = line
            for uri in spec.impus:
                if uri in seen_impu:
                    raise CsvError(line, "impu", f"{uri!r} already on line {seen_impu[uri]}")
                seen_impu[uri] = line
            specs.append(spec)
    except csv.Error as exc:
        raise CsvError(reader.line_num or line, "row", f"unreadable CSV ({exc})") from None
    return specs
